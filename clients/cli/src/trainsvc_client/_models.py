"""The model registry's calls (trainsvc.v1.ModelService): `Client.models` and, for
asyncio, `AsyncClient.models`. Each request is built once here for both."""

from __future__ import annotations

import builtins
from collections.abc import Mapping, Sequence
from typing import Any, TypedDict, Unpack

import grpc
from trainsvc_api.v1 import models_pb2 as mpb
from trainsvc_api.v1 import models_pb2_grpc as mpb_grpc

from trainsvc_client._trajectories import AsyncUnary, Unary


def model_name(model: str) -> str:
    """``models/trader`` from ``trader`` or ``models/trader``."""
    return model if model.startswith("models/") else f"models/{model}"


def version_name(model: str, version: int | None = None) -> str:
    """``models/trader/versions/3`` from ``("trader", 3)`` or a full version name."""
    if version is None:
        return model
    return f"{model_name(model)}/versions/{version}"


def automation_name(model: str) -> str:
    """``models/trader/automation`` from ``trader`` or ``models/trader``."""
    return f"{model_name(model)}/automation"


class RegisterFields(TypedDict, total=False):
    """The optional fields of `ModelsApi.register`."""

    artifact_kind: str
    base_model: str
    source_run: str
    source_checkpoint: str
    metrics: Mapping[str, float] | None
    windows: Sequence[str]
    reason: str


def register_request(
    model: str, artifact_dir: str, **f: Unpack[RegisterFields]
) -> mpb.RegisterModelVersionRequest:
    """The `RegisterModelVersion` request (see `ModelsApi.register`)."""
    return mpb.RegisterModelVersionRequest(
        model=model_name(model),
        artifact_dir=artifact_dir,
        artifact_kind=f.get("artifact_kind", "adapter"),
        base_model=f.get("base_model", ""),
        source_run=f.get("source_run", ""),
        source_checkpoint=f.get("source_checkpoint", ""),
        metrics=dict(f.get("metrics") or {}),
        windows=list(f.get("windows", ())),
        reason=f.get("reason", ""),
    )


def traffic_request(
    model: str,
    traffic: Mapping[int, float],
    reason: str,
    external_base_url: str,
    local: bool,
) -> mpb.SetTrafficRequest:
    """The `SetTraffic` request (see `ModelsApi.set_traffic`)."""
    return mpb.SetTrafficRequest(
        model=model_name(model),
        traffic=dict(traffic),
        reason=reason,
        external_base_url=external_base_url,
        local=local,
    )


def promote_request(
    model: str, version: int, fraction: float, force: bool, reason: str
) -> mpb.PromoteRequest:
    """The `Promote` request (see `ModelsApi.promote`)."""
    return mpb.PromoteRequest(
        name=version_name(model, version), fraction=fraction, force=force, reason=reason
    )


def events_request(model: str, after: int) -> mpb.ListModelEventsRequest:
    """The `ListModelEvents` request (see `ModelsApi.events`)."""
    return mpb.ListModelEventsRequest(
        model=model_name(model) if model else "", after_sequence=after
    )


def automation_request(
    model: str, policy: mpb.AutomationPolicy | Mapping[str, Any], reason: str
) -> mpb.SetAutomationRequest:
    """The `SetAutomation` request (see `ModelsApi.set_automation`)."""
    message = policy if isinstance(policy, mpb.AutomationPolicy) else mpb.AutomationPolicy(**policy)
    return mpb.SetAutomationRequest(model=model_name(model), policy=message, reason=reason)


class ModelsApi:
    """Registers model versions, routes their traffic and automates their roll-out
    (`Client.models`).

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
        timeout: float | None = None,
        **fields: Unpack[RegisterFields],
    ) -> mpb.ModelVersion:
        """Register the next version: from ``artifact_dir`` on the service's machine
        (``artifact_kind`` "adapter" with its ``base_model``, or "full"), or, with an
        empty ``artifact_dir``, exported from ``source_run``'s newest checkpoint (or
        ``source_checkpoint``); ``metrics``, ``windows`` and ``reason`` are kept."""
        request = register_request(model, artifact_dir, **fields)
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
        request = traffic_request(model, traffic, reason, external_base_url, local)
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
        request = promote_request(model, version, fraction, force, reason)
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
        """The events of ``model`` (or of every model), oldest first, after a sequence."""
        reply = self._unary(self._stub.ListModelEvents, events_request(model, after), timeout)
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
        request = automation_request(model, policy, reason)
        result: mpb.Automation = self._unary(self._stub.SetAutomation, request, timeout)
        return result

    def get_automation(self, model: str, *, timeout: float | None = None) -> mpb.Automation:
        """The model's automation policy and where its cycle stands."""
        request = mpb.GetAutomationRequest(name=automation_name(model))
        result: mpb.Automation = self._unary(self._stub.GetAutomation, request, timeout)
        return result

    def run_automation(
        self, model: str, *, dry_run: bool = False, timeout: float | None = None
    ) -> mpb.RunAutomationResponse:
        """Advance the model's automation now (``dry_run``: only decide); its decisions."""
        request = mpb.RunAutomationRequest(name=automation_name(model), dry_run=dry_run)
        result: mpb.RunAutomationResponse = self._unary(self._stub.RunAutomation, request, timeout)
        return result


class AsyncModelsApi:
    """`ModelsApi` for asyncio (`AsyncClient.models`): the same calls, arguments and
    errors, awaited."""

    def __init__(self, channel: grpc.aio.Channel, unary: AsyncUnary) -> None:
        self._stub = mpb_grpc.ModelServiceStub(channel)
        self._unary = unary

    async def list(self, *, timeout: float | None = None) -> builtins.list[mpb.Model]:
        """Every registered model with its versions and deployment."""
        reply = await self._unary(self._stub.ListModels, mpb.ListModelsRequest(), timeout)
        return builtins.list(reply.models)

    async def get(
        self, model: str, version: int | None = None, *, timeout: float | None = None
    ) -> mpb.ModelVersion:
        """One version: ``get("trader", 2)`` or ``get("models/trader/versions/2")``."""
        request = mpb.GetModelVersionRequest(name=version_name(model, version))
        result: mpb.ModelVersion = await self._unary(self._stub.GetModelVersion, request, timeout)
        return result

    async def register(
        self,
        model: str,
        artifact_dir: str,
        *,
        timeout: float | None = None,
        **fields: Unpack[RegisterFields],
    ) -> mpb.ModelVersion:
        """See `ModelsApi.register`."""
        request = register_request(model, artifact_dir, **fields)
        stub = self._stub.RegisterModelVersion
        result: mpb.ModelVersion = await self._unary(stub, request, timeout)
        return result

    async def set_traffic(
        self,
        model: str,
        traffic: Mapping[int, float],
        *,
        reason: str = "",
        external_base_url: str = "",
        local: bool = False,
        timeout: float | None = None,
    ) -> mpb.Deployment:
        """See `ModelsApi.set_traffic`."""
        request = traffic_request(model, traffic, reason, external_base_url, local)
        result: mpb.Deployment = await self._unary(self._stub.SetTraffic, request, timeout)
        return result

    async def promote(
        self,
        model: str,
        version: int,
        fraction: float = 1.0,
        *,
        force: bool = False,
        reason: str = "",
        timeout: float | None = None,
    ) -> mpb.Deployment:
        """See `ModelsApi.promote`."""
        request = promote_request(model, version, fraction, force, reason)
        result: mpb.Deployment = await self._unary(self._stub.Promote, request, timeout)
        return result

    async def rollback(
        self, model: str, *, reason: str = "", timeout: float | None = None
    ) -> mpb.Deployment:
        """See `ModelsApi.rollback`."""
        request = mpb.RollbackRequest(model=model_name(model), reason=reason)
        result: mpb.Deployment = await self._unary(self._stub.Rollback, request, timeout)
        return result

    async def deployments(self, *, timeout: float | None = None) -> builtins.list[mpb.Deployment]:
        """Every deployment."""
        request = mpb.ListDeploymentsRequest()
        reply = await self._unary(self._stub.ListDeployments, request, timeout)
        return builtins.list(reply.deployments)

    async def events(
        self, model: str = "", *, after: int = 0, timeout: float | None = None
    ) -> builtins.list[mpb.ModelEvent]:
        """See `ModelsApi.events`."""
        request = events_request(model, after)
        reply = await self._unary(self._stub.ListModelEvents, request, timeout)
        return builtins.list(reply.events)

    async def set_automation(
        self,
        model: str,
        policy: mpb.AutomationPolicy | Mapping[str, Any],
        *,
        reason: str = "",
        timeout: float | None = None,
    ) -> mpb.Automation:
        """See `ModelsApi.set_automation`."""
        request = automation_request(model, policy, reason)
        result: mpb.Automation = await self._unary(self._stub.SetAutomation, request, timeout)
        return result

    async def get_automation(self, model: str, *, timeout: float | None = None) -> mpb.Automation:
        """See `ModelsApi.get_automation`."""
        request = mpb.GetAutomationRequest(name=automation_name(model))
        result: mpb.Automation = await self._unary(self._stub.GetAutomation, request, timeout)
        return result

    async def run_automation(
        self, model: str, *, dry_run: bool = False, timeout: float | None = None
    ) -> mpb.RunAutomationResponse:
        """See `ModelsApi.run_automation`."""
        request = mpb.RunAutomationRequest(name=automation_name(model), dry_run=dry_run)
        stub = self._stub.RunAutomation
        result: mpb.RunAutomationResponse = await self._unary(stub, request, timeout)
        return result


__all__ = ["AsyncModelsApi", "ModelsApi", "automation_name", "model_name", "version_name"]
