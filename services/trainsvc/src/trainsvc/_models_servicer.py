"""trainsvc.v1.ModelService: the model registry over gRPC (a thin adapter).

Requests are checked and converted here; the rules live in `_model_registry`
(versions, splits, promote and roll back), `_traffic` and `_artifacts`. Every
change records the caller's principal (`Principals`) and the request's reason.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from trainsvc_api.v1 import models_pb2 as mpb
from trainsvc_api.v1 import models_pb2_grpc as mpb_grpc

from trainsvc._artifacts import ArtifactStore
from trainsvc._automation import Automation, Decision
from trainsvc._automation_policy import AutomationPolicy
from trainsvc._checkpoints import local_file
from trainsvc._domain import (
    CheckpointRecord,
    FailedPreconditionError,
    InvalidArgumentError,
    echo,
    parse_checkpoint_name,
    parse_run_name,
)
from trainsvc._metrics import Metrics
from trainsvc._model_registry import (
    Also,
    Deployment,
    ModelEvent,
    ModelRegistry,
    ModelVersion,
    check_model_name,
)
from trainsvc._paths import InputRoots
from trainsvc._remote_store import RemoteStore
from trainsvc._rpc import Context, unary_call

_VERSION_NAME = re.compile(r"models/([^/]+)/versions/([1-9][0-9]{0,17})")
PrincipalOf = Callable[[Context], str]
RunCheckpoints = Callable[[str], list[CheckpointRecord]]
EXPORT_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class _Artifact:
    """A directory to register, with what an export learned about it."""

    path: Path
    kind: str
    base_model: str
    checkpoint: str


def export_run_checkpoint(record: CheckpointRecord, local: Path, out: Path) -> _Artifact:
    """Exports a lora or grpo run's checkpoint (its file at ``local``) in a child process
    (`trainsvc_lm._export`), so the service never imports JAX.

    Raises:
        FailedPreconditionError: the export failed (its error is in the message).
    """
    cmd = [sys.executable, "-m", "trainsvc_lm._export", str(local), str(out)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=EXPORT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise FailedPreconditionError(
            f"exporting {record.name} took over {EXPORT_TIMEOUT_S:.0f} s"
        ) from None
    try:
        result = json.loads(done.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        result = {"error": (done.stderr.strip().splitlines() or ["no output"])[-1]}
    if done.returncode != 0 or "error" in result:
        raise FailedPreconditionError(f"cannot export {record.name}: {result.get('error')}")
    return _Artifact(out, str(result["kind"]), str(result["base_model"]), record.name)


def _external_url(request: mpb.SetTrafficRequest) -> str | None:
    """The deployment's new external server: "" (local) with ``local``, None to keep it."""
    if request.local:
        if request.external_base_url:
            raise InvalidArgumentError("local", "give either local or external_base_url, not both")
        return ""
    return request.external_base_url or None


def parse_model_name(name: str, field: str = "model") -> str:
    """``trader`` from ``models/trader`` (or from a bare ``trader``)."""
    bare = name.removeprefix("models/")
    return check_model_name(bare, field)


def parse_version_name(name: str, field: str = "name") -> tuple[str, int]:
    """``("trader", 3)`` from ``models/trader/versions/3``."""
    m = _VERSION_NAME.fullmatch(name or "")
    if m is None:
        raise InvalidArgumentError(
            field, f"must be models/{{model}}/versions/{{version}}, got {echo(name)}"
        )
    return check_model_name(m.group(1), field), int(m.group(2))


def _time(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def version_to_proto(v: ModelVersion) -> mpb.ModelVersion:
    """The wire form of a version."""
    return mpb.ModelVersion(
        name=f"models/{v.model}/versions/{v.version}",
        model=v.model,
        version=v.version,
        base_model=v.base_model,
        artifact_uri=v.artifact_uri,
        artifact_sha256=v.artifact_sha256,
        artifact_kind=v.artifact_kind,
        source_run=v.source_run,
        source_checkpoint=v.source_checkpoint,
        metrics=v.metrics,
        windows=list(v.windows),
        evaluation=v.evaluation,
        evaluation_metrics=v.evaluation_metrics,
        create_time=_time(v.create_time),
    )


def deployment_to_proto(d: Deployment) -> mpb.Deployment:
    """The wire form of a deployment."""
    return mpb.Deployment(
        name=f"models/{d.model}/deployment",
        model=d.model,
        traffic=d.traffic,
        external_base_url=d.external_base_url,
        update_time=_time(d.update_time),
    )


def event_to_proto(e: ModelEvent) -> mpb.ModelEvent:
    """The wire form of an event."""
    return mpb.ModelEvent(
        sequence=e.sequence,
        model=f"models/{e.model}",
        version=e.version,
        type=e.type,
        time=_time(e.time),
        principal=e.principal,
        reason=e.reason,
        details_json=json.dumps(e.details, sort_keys=True),
        severity=e.severity,
    )


def automation_to_proto(
    model: str, policy: AutomationPolicy, state: Mapping[str, Any]
) -> mpb.Automation:
    """The wire form of a model's automation."""
    p = policy.to_dict()
    out = mpb.Automation(
        name=f"models/{model}/automation",
        policy=mpb.AutomationPolicy(**p),
        phase=str(state.get("phase", "idle")),
        run=f"runs/{state['run_id']}" if state.get("run_id") else "",
        candidate_version=int(state.get("candidate", 0)),
        baseline_version=int(state.get("baseline", 0)),
        last_decision=str(state.get("last_decision", "")),
    )
    if state.get("next_run_time"):
        out.next_run_time.CopyFrom(_time(float(state["next_run_time"])))
    if state.get("last_training_time"):
        out.last_training_time.CopyFrom(_time(float(state["last_training_time"])))
    return out


def decision_to_proto(d: Decision) -> mpb.AutomationDecision:
    """The wire form of an automation decision."""
    return mpb.AutomationDecision(
        action=d.action,
        reason=d.reason,
        details_json=json.dumps(d.details, sort_keys=True),
        severity=d.severity,
        dry_run=d.dry_run,
    )


def parse_automation_name(name: str, field: str = "name") -> str:
    """``trader`` from ``models/trader/automation``."""
    head, slash, tail = (name or "").rpartition("/")
    if not slash or tail != "automation":
        raise InvalidArgumentError(field, f"must be models/{{model}}/automation, got {echo(name)}")
    return parse_model_name(head, field)


class ModelServicer(mpb_grpc.ModelServiceServicer):
    """Implements trainsvc.v1.ModelService over a `ModelRegistry` and an `ArtifactStore`."""

    def __init__(
        self,
        registry: ModelRegistry,
        store: ArtifactStore,
        inputs: InputRoots,
        metrics: Metrics,
        principal_of: PrincipalOf,
        run_checkpoints: RunCheckpoints | None = None,
        remote: RemoteStore | None = None,
    ) -> None:
        self.registry = registry
        self.remote = remote
        """The runs' ``--data-dir`` object storage (None: a local data directory)."""
        self.store = store
        self.inputs = inputs
        self.metrics = metrics
        self.principal_of = principal_of
        self.run_checkpoints = run_checkpoints
        self.automation: Automation | None = None
        """Set by the service when it runs the automation (it needs --trajectory-db)."""

    def _automation(self) -> Automation:
        if self.automation is None:
            raise FailedPreconditionError(
                "model automation needs the trajectory store and the lm extra: start the "
                "service with --trajectory-db URL (pip install 'trainsvc[lm]')"
            )
        return self.automation

    def _source_checkpoint(self, request: mpb.RegisterModelVersionRequest) -> CheckpointRecord:
        """The checkpoint of ``source_run`` to export: ``source_checkpoint``, else the newest."""
        if self.run_checkpoints is None:
            raise InvalidArgumentError("artifact_dir", "is required (this service has no runs)")
        run_id = parse_run_name(request.source_run, "source_run")
        found = self.run_checkpoints(run_id)
        if request.source_checkpoint:
            wanted_run, wanted = parse_checkpoint_name(
                request.source_checkpoint, "source_checkpoint"
            )
            found = [c for c in found if c.checkpoint_id == wanted and wanted_run == run_id]
            if not found:
                raise InvalidArgumentError(
                    "source_checkpoint", f"{request.source_checkpoint} is not a checkpoint of it"
                )
        if not found:
            raise InvalidArgumentError("source_run", f"{request.source_run} has no checkpoint")
        return max(found, key=lambda c: (c.step, c.create_time))

    def register_run(
        self,
        model: str,
        run_id: str,
        windows: Sequence[str],
        metrics: Mapping[str, float],
        reason: str,
        also: Also,
    ) -> ModelVersion:
        """Registers the newest checkpoint of run ``run_id`` (the automation's way in);
        ``also`` is committed with the version."""
        request = mpb.RegisterModelVersionRequest(
            model=model,
            source_run=f"runs/{run_id}",
            metrics=dict(metrics),
            windows=list(windows),
            reason=reason,
        )
        return self._register(request, "automation", also)

    def _register(
        self,
        request: mpb.RegisterModelVersionRequest,
        principal: str,
        also: Also | None = None,
    ) -> ModelVersion:
        model = parse_model_name(request.model)
        if request.artifact_dir:
            source = self.inputs.resolve(request.artifact_dir, "artifact_dir", expect="dir")
            artifact = _Artifact(
                source, request.artifact_kind, request.base_model, request.source_checkpoint
            )
            return self._put_and_register(model, artifact, request, principal, also)
        if not request.source_run:
            raise InvalidArgumentError(
                "artifact_dir", "give an artifact directory, or a source_run to export"
            )
        record = self._source_checkpoint(request)
        with tempfile.TemporaryDirectory(prefix="trainsvc-export-") as tmp:
            local = local_file(record, Path(tmp) / "checkpoint", "source_checkpoint", self.remote)
            artifact = export_run_checkpoint(record, local, Path(tmp) / "artifact")
            return self._put_and_register(model, artifact, request, principal, also)

    def _put_and_register(
        self,
        model: str,
        artifact: _Artifact,
        request: mpb.RegisterModelVersionRequest,
        principal: str,
        also: Also | None,
    ) -> ModelVersion:
        stored = self.store.put(model, artifact.path)
        return self.registry.register(
            model,
            base_model=artifact.base_model,
            artifact_uri=stored.uri,
            artifact_kind=artifact.kind,
            artifact_sha256=stored.sha256,
            source_run=request.source_run,
            source_checkpoint=artifact.checkpoint,
            metrics=dict(request.metrics),
            windows=list(request.windows),
            principal=principal,
            reason=request.reason,
            also=also,
        )

    async def ListModels(  # noqa: N802
        self, request: mpb.ListModelsRequest, context: Context
    ) -> mpb.ListModelsResponse:
        def fn(_t: float | None) -> mpb.ListModelsResponse:
            out = []
            for name in self.registry.models():
                model = mpb.Model(
                    name=f"models/{name}",
                    versions=[version_to_proto(v) for v in self.registry.versions(name)],
                )
                deployment = self.registry.deployment(name)
                if deployment is not None:
                    model.deployment.CopyFrom(deployment_to_proto(deployment))
                out.append(model)
            return mpb.ListModelsResponse(models=out)

        return await unary_call(self.metrics, "ListModels", context, fn)

    async def GetModelVersion(  # noqa: N802
        self, request: mpb.GetModelVersionRequest, context: Context
    ) -> mpb.ModelVersion:
        def fn(_t: float | None) -> mpb.ModelVersion:
            model, version = parse_version_name(request.name)
            return version_to_proto(self.registry.version(model, version))

        return await unary_call(self.metrics, "GetModelVersion", context, fn)

    async def RegisterModelVersion(  # noqa: N802
        self, request: mpb.RegisterModelVersionRequest, context: Context
    ) -> mpb.ModelVersion:
        principal = self.principal_of(context)

        def fn(_t: float | None) -> mpb.ModelVersion:
            return version_to_proto(self._register(request, principal))

        return await unary_call(self.metrics, "RegisterModelVersion", context, fn)

    async def SetTraffic(  # noqa: N802
        self, request: mpb.SetTrafficRequest, context: Context
    ) -> mpb.Deployment:
        principal = self.principal_of(context)

        def fn(_t: float | None) -> mpb.Deployment:
            model = parse_model_name(request.model)
            deployment = self.registry.set_traffic(
                model,
                {int(v): float(s) for v, s in request.traffic.items()},
                principal=principal,
                reason=request.reason,
                external_base_url=_external_url(request),
            )
            return deployment_to_proto(deployment)

        return await unary_call(self.metrics, "SetTraffic", context, fn)

    async def Promote(self, request: mpb.PromoteRequest, context: Context) -> mpb.Deployment:  # noqa: N802
        principal = self.principal_of(context)

        def fn(_t: float | None) -> mpb.Deployment:
            model, version = parse_version_name(request.name)
            fraction = request.fraction or 1.0
            deployment = self.registry.promote(
                model,
                version,
                fraction,
                force=request.force,
                principal=principal,
                reason=request.reason,
            )
            return deployment_to_proto(deployment)

        return await unary_call(self.metrics, "Promote", context, fn)

    async def Rollback(self, request: mpb.RollbackRequest, context: Context) -> mpb.Deployment:  # noqa: N802
        principal = self.principal_of(context)

        def fn(_t: float | None) -> mpb.Deployment:
            model = parse_model_name(request.model)
            deployment = self.registry.rollback(model, principal=principal, reason=request.reason)
            return deployment_to_proto(deployment)

        return await unary_call(self.metrics, "Rollback", context, fn)

    async def ListDeployments(  # noqa: N802
        self, request: mpb.ListDeploymentsRequest, context: Context
    ) -> mpb.ListDeploymentsResponse:
        def fn(_t: float | None) -> mpb.ListDeploymentsResponse:
            return mpb.ListDeploymentsResponse(
                deployments=[deployment_to_proto(d) for d in self.registry.deployments()]
            )

        return await unary_call(self.metrics, "ListDeployments", context, fn)

    async def ListModelEvents(  # noqa: N802
        self, request: mpb.ListModelEventsRequest, context: Context
    ) -> mpb.ListModelEventsResponse:
        def fn(_t: float | None) -> mpb.ListModelEventsResponse:
            model = parse_model_name(request.model) if request.model else None
            events = self.registry.events(model, after=request.after_sequence)
            return mpb.ListModelEventsResponse(events=[event_to_proto(e) for e in events])

        return await unary_call(self.metrics, "ListModelEvents", context, fn)

    async def SetAutomation(  # noqa: N802
        self, request: mpb.SetAutomationRequest, context: Context
    ) -> mpb.Automation:
        principal = self.principal_of(context)

        def fn(_t: float | None) -> mpb.Automation:
            model = parse_model_name(request.model)
            if not request.HasField("policy"):
                raise InvalidArgumentError("policy", "is required")
            policy = AutomationPolicy.from_wire(request.policy)
            automation = self._automation()
            state = automation.set_policy(model, policy, principal=principal, reason=request.reason)
            return automation_to_proto(model, policy, state)

        return await unary_call(self.metrics, "SetAutomation", context, fn)

    async def GetAutomation(  # noqa: N802
        self, request: mpb.GetAutomationRequest, context: Context
    ) -> mpb.Automation:
        def fn(_t: float | None) -> mpb.Automation:
            model = parse_automation_name(request.name)
            policy, state = self._automation().status(model)
            return automation_to_proto(model, policy, state)

        return await unary_call(self.metrics, "GetAutomation", context, fn)

    async def RunAutomation(  # noqa: N802
        self, request: mpb.RunAutomationRequest, context: Context
    ) -> mpb.RunAutomationResponse:
        def fn(_t: float | None) -> mpb.RunAutomationResponse:
            model = parse_automation_name(request.name)
            automation = self._automation()
            decisions = automation.run_once(model, dry_run=request.dry_run)
            policy, state = automation.status(model)
            return mpb.RunAutomationResponse(
                decisions=[decision_to_proto(d) for d in decisions],
                automation=automation_to_proto(model, policy, state),
            )

        return await unary_call(self.metrics, "RunAutomation", context, fn, inline=False)


__all__ = [
    "ModelServicer",
    "deployment_to_proto",
    "event_to_proto",
    "parse_model_name",
    "parse_version_name",
    "version_to_proto",
]
