"""The service's model half: registry, artifact storage, ModelService, OpenAI endpoint.

`ModelStack.open` builds the registry (``<data-dir>/models.sqlite3``) and the
artifact store (``--models-storage``, default ``<data-dir>/artifacts``) and the
gRPC servicer; `ModelStack.start_endpoint` starts the OpenAI-compatible endpoint
(``--openai-listen``) in its own thread, recording calls into ``--trajectory-db``
when given. The endpoint's imports (trainsvc-lm, starlette, uvicorn: the
``trainsvc[serve]`` extra) happen only then, so a service without the extra starts.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainsvc._artifacts import ArtifactStore
from trainsvc._automation import Automation, Runs
from trainsvc._metrics import Metrics
from trainsvc._model_registry import ModelRegistry
from trainsvc._models_servicer import ModelServicer, RunCheckpoints
from trainsvc._paths import InputRoots
from trainsvc._remote_store import RemoteStore
from trainsvc._rpc import Context

log = logging.getLogger("trainsvc.models")

AUTOMATION_DIR = "automation"
"""Under the data directory: the automation's exported groups and fetched versions."""


class EndpointUnavailableError(RuntimeError):
    """``--openai-listen`` was given but the ``serve`` extra is not installed."""


def principal_resolver(token: str | None, principal: str) -> Any:
    """The principal of a call: ``principal`` for the service's token, ``local`` without auth."""

    def principal_of(context: Context) -> str:
        if token is None:
            return "local"
        for key, value in context.invocation_metadata() or ():
            if key == "authorization" and hmac.compare_digest(
                str(value).encode(), f"Bearer {token}".encode()
            ):
                return principal
        return "unknown"

    return principal_of


@dataclass
class ModelStack:
    """The model registry's parts, as one service builds them."""

    registry: ModelRegistry
    store: ArtifactStore
    servicer: ModelServicer
    inputs: InputRoots
    data_dir: Path
    token: str | None
    _endpoint: Any = None
    _engines: Any = None
    _recorder: Any = None
    automation: Automation | None = None
    endpoint_url: str = ""
    _closed: bool = field(default=False, repr=False)

    @classmethod
    def open(
        cls,
        data_dir: Path,
        storage: str,
        inputs: InputRoots,
        metrics: Metrics,
        *,
        token: str | None,
        principal: str,
        run_checkpoints: RunCheckpoints | None,
        remote: RemoteStore | None = None,
    ) -> ModelStack:
        """Opens the registry and the artifact store and builds the servicer."""
        registry = ModelRegistry(data_dir / "models.sqlite3")
        store = ArtifactStore(storage or data_dir / "artifacts")
        servicer = ModelServicer(
            registry,
            store,
            inputs,
            metrics,
            principal_resolver(token, principal),
            run_checkpoints,
            remote,
        )
        return cls(registry, store, servicer, inputs, data_dir, token)

    def start_endpoint(self, listen: str, trajectory_db: str) -> str:
        """Serves the OpenAI-compatible endpoint on ``listen`` (HOST:PORT); returns its URL.

        Raises:
            EndpointUnavailableError: the ``serve`` extra is missing.
        """
        try:
            from trainsvc_lm import ServerThread

            from trainsvc._openai_serving import CallRecorder, DeployedEngines, serving_app
        except ImportError as exc:
            raise EndpointUnavailableError(
                f"--openai-listen needs the serve extra ({exc.name} is missing): "
                "pip install 'trainsvc[serve]'"
            ) from None
        host, _, port = listen.rpartition(":")
        self._engines = DeployedEngines(
            self.registry, self.store, self.data_dir / "serving-cache", self.inputs
        )
        calls = None
        if trajectory_db:
            import trainsvc_trajectories as tt

            self._recorder = tt.TrajectoryRecorder(trajectory_db)
            calls = CallRecorder(self._recorder)
        # engines (and vLLM adapters) of versions that leave the traffic are let go
        engines = self._engines
        self.registry.watch_deployments(lambda _model: engines.unload_undeployed())
        app = serving_app(self._engines, calls, token=self.token)
        self._endpoint = ServerThread(app, host.strip("[]"), int(port))
        self.endpoint_url = self._endpoint.url
        return self.endpoint_url

    def start_automation(
        self,
        runs: Runs,
        trajectory_db: str,
        work_dir: Path,
        poll_s: float,
        is_active: Callable[[], bool] = lambda: True,
    ) -> Automation:
        """Starts the model automation (its loop checks every ``poll_s`` seconds while
        ``is_active()``: a standby of a shared registry leaves it to the active one)."""
        if poll_s <= 0:
            raise ValueError(f"--automation-poll must be > 0, got {poll_s}")
        self.automation = Automation(
            self.registry,
            self.store,
            runs,
            self.servicer.register_run,
            self.servicer.metrics,
            trajectory_db=trajectory_db,
            work_dir=work_dir,
            base_model_dir=lambda v: self.inputs.resolve(v.base_model, "base_model", expect="dir"),
            is_active=is_active,
        )
        self.servicer.automation = self.automation
        self.automation.start(poll_s)
        return self.automation

    def close(self) -> None:
        """Stops the automation, the endpoint, its engines and recorder; closes the registry."""
        if self._closed:
            return
        self._closed = True
        for part in (self.automation, self._endpoint, self._engines, self._recorder):
            if part is not None:
                try:
                    part.close()
                except Exception:
                    log.exception("closing %s failed", type(part).__name__)
        self.registry.close()


__all__ = ["AUTOMATION_DIR", "EndpointUnavailableError", "ModelStack", "principal_resolver"]
