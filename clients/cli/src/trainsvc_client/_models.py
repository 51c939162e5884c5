"""The model registry's calls (trainsvc.v1.ModelService), as `Client.models`."""

from __future__ import annotations

import builtins
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message
from trainsvc_api.v1 import models_pb2 as mpb
from trainsvc_api.v1 import models_pb2_grpc as mpb_grpc

T = TypeVar("T")
Unary = Callable[[Callable[..., Any], Message, float | None], Any]


def model_name(model: str) -> str:
    """``models/trader`` from ``trader`` or ``models/trader``."""
    return model if model.startswith("models/") else f"models/{model}"


def version_name(model: str, version: int | None = None) -> str:
    """``models/trader/versions/3`` from ``("trader", 3)`` or a full version name."""
    if version is None:
        return model
    return f"{model_name(model)}/versions/{version}"


class ModelsApi:
    """Registers model versions and routes their traffic (`Client.models`).

    Every change is recorded as a model event with the token's principal and the
    ``reason`` given. Errors raise the client's `TrainsvcError` subclasses.
    """

    def __init__(self, channel: grpc.Channel, unary: Unary) -> None:
        self._stub = mpb_grpc.ModelServiceStub(channel)
        self._unary = unary

    def list(self, *, timeout: float | None = None) -> list[mpb.Model]:
        """Every registered model with its versions and deployment."""
        reply = self._unary(self._stub.ListModels, mpb.ListModelsRequest(), timeout)
        return list(reply.models)

    def get(
        self, model: str, version: int | None = None, *, timeout: float | None = None
    ) -> mpb.ModelVersion:
        """One version: ``get("trader", 2)`` or ``get("models/trader/versions/2")``."""
        request = mpb.GetModelVersionRequest(name=version_name(model, version))
        result: mpb.ModelVersion = self._unary(self._stub.GetModelVersion, request, timeout)
        return result

    def register(
        self,
        model: str,
        artifact_dir: str,
        *,
        artifact_kind: str = "adapter",
        base_model: str = "",
        source_run: str = "",
        source_checkpoint: str = "",
        metrics: Mapping[str, float] | None = None,
        windows: Sequence[str] = (),
        reason: str = "",
        timeout: float | None = None,
    ) -> mpb.ModelVersion:
        """Register the next version from a directory on the service's machine."""
        request = mpb.RegisterModelVersionRequest(
            model=model_name(model),
            artifact_dir=artifact_dir,
            artifact_kind=artifact_kind,
            base_model=base_model,
            source_run=source_run,
            source_checkpoint=source_checkpoint,
            metrics=dict(metrics or {}),
            windows=list(windows),
            reason=reason,
        )
        result: mpb.ModelVersion = self._unary(self._stub.RegisterModelVersion, request, timeout)
        return result

    def set_traffic(
        self,
        model: str,
        traffic: Mapping[int, float],
        *,
        reason: str = "",
        external_base_url: str = "",
        local: bool = False,
        timeout: float | None = None,
    ) -> mpb.Deployment:
        """Replace the model's split (version -> share, summing to 1); optionally route it
        to an external server (``external_base_url``) or back to trainsvc's own (``local``)."""
        request = mpb.SetTrafficRequest(
            model=model_name(model),
            traffic=dict(traffic),
            reason=reason,
            external_base_url=external_base_url,
            local=local,
        )
        result: mpb.Deployment = self._unary(self._stub.SetTraffic, request, timeout)
        return result

    def promote(
        self,
        model: str,
        version: int,
        fraction: float = 1.0,
        *,
        force: bool = False,
        reason: str = "",
        timeout: float | None = None,
    ) -> mpb.Deployment:
        """Give ``version`` ``fraction`` of the traffic (failed evaluations need ``force``)."""
        request = mpb.PromoteRequest(
            name=version_name(model, version), fraction=fraction, force=force, reason=reason
        )
        result: mpb.Deployment = self._unary(self._stub.Promote, request, timeout)
        return result

    def rollback(
        self, model: str, *, reason: str = "", timeout: float | None = None
    ) -> mpb.Deployment:
        """Restore the split before the last change."""
        request = mpb.RollbackRequest(model=model_name(model), reason=reason)
        result: mpb.Deployment = self._unary(self._stub.Rollback, request, timeout)
        return result

    def deployments(self, *, timeout: float | None = None) -> builtins.list[mpb.Deployment]:
        """Every deployment."""
        reply = self._unary(self._stub.ListDeployments, mpb.ListDeploymentsRequest(), timeout)
        return list(reply.deployments)

    def events(
        self, model: str = "", *, after: int = 0, timeout: float | None = None
    ) -> builtins.list[mpb.ModelEvent]:
        """The events of ``model`` (or of every model), after a sequence number."""
        request = mpb.ListModelEventsRequest(
            model=model_name(model) if model else "", after_sequence=after
        )
        reply = self._unary(self._stub.ListModelEvents, request, timeout)
        return list(reply.events)

    def set_automation(
        self,
        model: str,
        policy: mpb.AutomationPolicy | Mapping[str, Any],
        *,
        reason: str = "",
        timeout: float | None = None,
    ) -> mpb.Automation:
        """Create or replace the model's automation policy (an `AutomationPolicy` or its
        fields as a dict, e.g. ``{"interval_seconds": 3600, "judge": "task:increment4"}``)."""
        message = (
            policy if isinstance(policy, mpb.AutomationPolicy) else mpb.AutomationPolicy(**policy)
        )
        request = mpb.SetAutomationRequest(model=model_name(model), policy=message, reason=reason)
        result: mpb.Automation = self._unary(self._stub.SetAutomation, request, timeout)
        return result

    def get_automation(self, model: str, *, timeout: float | None = None) -> mpb.Automation:
        """The model's automation policy and where its cycle stands."""
        request = mpb.GetAutomationRequest(name=f"{model_name(model)}/automation")
        result: mpb.Automation = self._unary(self._stub.GetAutomation, request, timeout)
        return result

    def run_automation(
        self, model: str, *, dry_run: bool = False, timeout: float | None = None
    ) -> mpb.RunAutomationResponse:
        """Advance the model's automation now (``dry_run``: only decide); its decisions."""
        request = mpb.RunAutomationRequest(name=f"{model_name(model)}/automation", dry_run=dry_run)
        result: mpb.RunAutomationResponse = self._unary(self._stub.RunAutomation, request, timeout)
        return result


__all__ = ["ModelsApi", "model_name", "version_name"]
