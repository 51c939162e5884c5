"""The run manager: the service's one entry point for runs.

It validates and registers runs, starts a `RunController` (``_controller``) for
each run that trains, routes the API's commands to it, answers reads from the
registry with the controllers' live progress, and recovers runs a previous
service process left behind. Recording what happens to a run is `RunJournal`'s
job (``_journal``); checking checkpoint files against the index is
``_checkpoints``'s.
"""

from __future__ import annotations

import logging
import multiprocessing
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path

from trainsvc_checkpoint import checkpoint_id, parse_checkpoint_file_name

from trainsvc import _checkpoints
from trainsvc._backends import WorkerBackend
from trainsvc._controller import DEFAULT_WAIT_S, RunController, WorkerSettings
from trainsvc._domain import (
    CheckpointRecord,
    Event,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    RunRecord,
    RunSpec,
    State,
    UnavailableError,
    parse_checkpoint_id,
    parse_checkpoint_name,
)
from trainsvc._journal import RunJournal, latest_checkpoint_path, latest_checkpoint_step
from trainsvc._metrics import Metrics
from trainsvc._paths import InputRoots
from trainsvc._registry import Registry
from trainsvc._remote_store import RemoteStore
from trainsvc.kinds import FrameData, get_kind

log = logging.getLogger("trainsvc.manager")


class RunManager:
    """Owns every run: creates, controls, restarts and recovers them."""

    def __init__(
        self,
        registry: Registry,
        data_dir: Path,
        metrics: Metrics,
        *,
        frame_sink: Callable[[str, FrameData], None],
        on_event: Callable[[Event], None],
        on_run_end: Callable[[str], None],
        worker_nice: int = 0,
        worker_cpus: frozenset[int] | None = None,
        input_roots: InputRoots | None = None,
        worker_backend: WorkerBackend | None = None,
        resume_lost_workers: bool = False,
        remote_checkpoints: RemoteStore | None = None,
    ) -> None:
        self.registry = registry
        self.input_roots = input_roots or InputRoots.of([Path.cwd()])
        self.data_dir = data_dir
        self.metrics = metrics
        self.frame_sink = frame_sink
        self.on_event = on_event
        self.on_run_end = on_run_end
        self.workers = WorkerSettings(
            multiprocessing.get_context("spawn"),
            nice=worker_nice,
            cpus=worker_cpus,
            backend=worker_backend,
            resume_lost=resume_lost_workers,
            remote=remote_checkpoints,
        )
        self.remote = remote_checkpoints
        """``serve --data-dir URL``: where runs' checkpoints live (None: ``run_dir``)."""
        self.controllers: dict[str, RunController] = {}
        self.lock = threading.RLock()
        self._shutting_down = False
        metrics.watch_states(self.state_counts)

    # -- helpers -------------------------------------------------------------

    def emit(self, event: Event) -> None:
        """Tell event followers that a new event was committed."""
        self.on_event(event)

    def run_dir(self, run_id: str) -> Path:
        """The run's directory under the data directory."""
        return self.data_dir / "runs" / run_id

    @property
    def shutting_down(self) -> bool:
        """The service is stopping (`shutdown` was called)."""
        return self._shutting_down

    def publish_frame(self, run_id: str, frame: FrameData) -> None:
        """Send a worker's frame to the run's subscribers (`RunHost`)."""
        self.frame_sink(run_id, frame)

    def resume_from_path(self, name: str) -> str:
        """The verified file of a run's ``resume_from`` (`RunHost`)."""
        return self.resolve_resume_from(name).path

    def _new_controller(self, record: RunRecord) -> RunController:
        """A controller for ``record``, registered as the run's (replacing any other)."""
        journal = RunJournal(record.id, self.registry, self.metrics, self.emit)
        ctl = RunController(
            record, journal, self, self.workers, self.run_dir(record.id) / "checkpoints"
        )
        with self.lock:
            self.controllers[record.id] = ctl
        return ctl

    def _verified(self, record: CheckpointRecord, field: str = "checkpoint") -> CheckpointRecord:
        return _checkpoints.verified(record, self.run_dir(record.run_id), field, self.remote)

    def resolve_resume_from(self, name: str) -> CheckpointRecord:
        """Resolve ``runs/{id}/checkpoints/{ckpt}`` to an indexed file inside that run's directory."""
        run_id, ckpt_id = parse_checkpoint_name(name, "resume_from")
        self.registry.get_run(run_id)
        return self._verified(self.registry.get_checkpoint(run_id, ckpt_id), "resume_from")

    def state_counts(self) -> dict[State, int]:
        """Runs per state (for the metrics endpoint)."""
        counts: dict[State, int] = {}
        for state in State:
            counts[state] = len(self.registry.runs_in_states((state,)))
        return counts

    def controller_done(self, run_id: str, ctl: RunController) -> None:
        """Forget a run's controller once its worker is gone for good (unless replaced)."""
        with self.lock:
            if self.controllers.get(run_id) is not ctl:
                return  # a newer controller took over the run (resume from a checkpoint)
            del self.controllers[run_id]
        self.on_run_end(run_id)

    def _live(self, record: RunRecord) -> RunRecord:
        ctl = self.controllers.get(record.id)
        if ctl is not None and not record.state.terminal:
            with ctl.lock:
                record.step = max(record.step, ctl.step)
                record.steps_per_second = ctl.sps if ctl.state == State.RUNNING else 0.0
                record.metrics = dict(ctl.metrics) or record.metrics
        return record

    # -- startup / shutdown --------------------------------------------------

    def recover(self, *, auto_resume: bool) -> list[str]:
        """Mark runs a previous service process left training INTERRUPTED; maybe resume them.

        PAUSED runs stay PAUSED (their pause checkpoint is where ResumeRun continues).
        """
        for record in self.registry.runs_in_states(tuple(State)):
            try:
                self.reconcile_checkpoints(record.id, verify_all=not record.state.terminal)
            except Exception:
                log.exception("reconciling the checkpoint index failed", extra={"run": record.id})
        recovered = []
        for record in self.registry.runs_in_states((State.PENDING, State.RUNNING)):
            self.emit(
                self.registry.set_state(
                    record.id,
                    State.INTERRUPTED,
                    f"the service restarted while the run was {record.state.value}",
                )
            )
            recovered.append(record.id)
        if auto_resume:  # also those a graceful shutdown left INTERRUPTED
            for run_id in [r.id for r in self.registry.runs_in_states((State.INTERRUPTED,))]:
                try:
                    self.resume(run_id, "", None)
                except Exception:
                    log.exception("auto-resume failed", extra={"run": run_id})
        return recovered

    def reconcile_checkpoints(self, run_id: str, *, verify_all: bool) -> None:
        """Make a run's checkpoint index match its directory (see `_checkpoints.reconcile`)."""
        ckpt_dir = self.run_dir(run_id) / "checkpoints"
        event = _checkpoints.reconcile(
            self.registry, run_id, ckpt_dir, verify_all=verify_all, remote=self.remote
        )
        if event is not None:
            self.emit(event)

    def shutdown(self, timeout: float = 60.0) -> None:
        """Checkpoint every active run and stop its worker; the runs become INTERRUPTED."""
        self._shutting_down = True
        with self.lock:
            controllers = list(self.controllers.values())
        deadline = time.monotonic() + timeout
        for ctl in controllers:
            ctl.kill_if_starting()  # still starting: nothing trained since its last checkpoint
            try:
                # A run that has just ended is already saved; its worker is exiting by itself.
                if ctl.ready.is_set() and not ctl.state.terminal:
                    ctl.command("shutdown", max(0.1, deadline - time.monotonic()))
            except Exception as exc:
                log.warning("shutdown checkpoint failed: %s", exc, extra={"run": ctl.run_id})
            if not ctl.state.terminal and ctl.state != State.PAUSED:  # paused runs stay paused
                with ctl.lock:
                    ctl.set_state(State.INTERRUPTED, "the service shut down; resumable")
        for ctl in controllers:
            ctl.join(max(0.1, deadline - time.monotonic()))

    # -- the API -------------------------------------------------------------

    def create_run(self, spec: RunSpec, run_id: str) -> RunRecord:
        """Validate, register and start a run."""
        if self.shutting_down:
            raise UnavailableError("the service is shutting down")
        kind = get_kind(spec.kind)
        resolved = kind.resolve_config(spec, self.input_roots)
        restore: str | None = None
        if spec.resume_from:
            restore = self.resolve_resume_from(spec.resume_from).path
        run_id = run_id or f"{spec.kind[:3]}-{time.strftime('%Y%m%d')}-{secrets.token_hex(3)}"
        now = time.time()
        record = RunRecord(
            id=run_id,
            spec=spec,
            state=State.PENDING,
            create_time=now,
            update_time=now,
            resolved_config=resolved,
        )
        self.emit(self.registry.insert_run(record, "run created"))
        self.run_dir(run_id).mkdir(parents=True, exist_ok=True)
        self._new_controller(record).spawn(restore)
        return self.registry.get_run(run_id)

    def get_run(self, run_id: str) -> RunRecord:
        """Return a run with its live progress."""
        return self._live(self.registry.get_run(run_id))

    def list_runs(
        self, state: State | None, limit: int, before: tuple[float, str] | None
    ) -> list[RunRecord]:
        """Return a page of runs with live progress."""
        return [
            self._live(r) for r in self.registry.list_runs(state=state, limit=limit, before=before)
        ]

    def _controller(self, run_id: str, action: str, allowed: tuple[State, ...]) -> RunController:
        record = self.registry.get_run(run_id)
        if record.state not in allowed:
            raise FailedPreconditionError(
                f"cannot {action} runs/{run_id}: it is {record.state.value}; "
                f"{action} needs {' or '.join(s.value for s in allowed)}"
            )
        with self.lock:
            ctl = self.controllers.get(run_id)
        if ctl is None:
            raise FailedPreconditionError(f"cannot {action} runs/{run_id}: it has no worker")
        return ctl

    def pause(self, run_id: str, timeout: float | None) -> RunRecord:
        """Finish the current step, checkpoint, hold (PAUSED)."""
        ctl = self._controller(run_id, "pause", (State.PENDING, State.RUNNING))
        with ctl.command_lock:
            if ctl.state == State.PAUSED:
                return self.get_run(run_id)
            ctl.ready.wait(DEFAULT_WAIT_S if timeout is None else timeout)
            started = time.perf_counter()
            ctl.command("pause", timeout)
            self.metrics.checkpoint_seconds.observe(time.perf_counter() - started)
            with ctl.lock:
                ctl.set_state(State.PAUSED, f"paused at step {ctl.step}")
        return self.get_run(run_id)

    def resume(self, run_id: str, checkpoint: str, timeout: float | None) -> RunRecord:
        """Continue a PAUSED run, or restart an INTERRUPTED one from its checkpoint."""
        ckpt_id = parse_checkpoint_id(checkpoint, "checkpoint") if checkpoint else ""
        record = self.registry.get_run(run_id)
        restore: str | None = None
        if ckpt_id:
            ckpt = self._verified(self.registry.get_checkpoint(run_id, ckpt_id))
            restore = ckpt.path
            newest = latest_checkpoint_step(self.registry, run_id)
            if get_kind(record.spec.kind).resumes_newest_only and ckpt.step < newest:
                raise InvalidArgumentError(
                    "checkpoint",
                    f"{record.spec.kind} runs resume only from their newest checkpoint (step "
                    f"{newest}; leave checkpoint empty for it): the engine continues from the "
                    f"newest file in the run's directory; got {ckpt_id} (step {ckpt.step})",
                )
        if record.state not in (State.PAUSED, State.INTERRUPTED):
            raise FailedPreconditionError(
                f"cannot resume runs/{run_id}: it is {record.state.value}; resume needs PAUSED or INTERRUPTED"
            )
        with self.lock:
            ctl = self.controllers.get(run_id)
        if ctl is not None and restore is None:
            with ctl.command_lock:
                ctl.command("resume", timeout)
                with ctl.lock:
                    ctl.set_state(State.RUNNING, f"resumed at step {ctl.step}")
            return self.get_run(run_id)
        if ctl is not None:  # resume from another checkpoint: replace the paused worker
            with ctl.command_lock:
                proc = ctl.end_worker()
            ctl.command("shutdown", timeout)
            if proc is not None:
                proc.join(DEFAULT_WAIT_S)
        fallback = False
        if restore is None:
            # Files saved while the index could not be written (a SIGKILL, a full disk)
            # are indexed first, so the run continues from its newest checkpoint.
            self.reconcile_checkpoints(run_id, verify_all=False)
            restore = latest_checkpoint_path(self.registry, run_id)
            fallback = restore is not None
        if restore is None and record.spec.resume_from:
            restore = self.resolve_resume_from(record.spec.resume_from).path
        ctl = self._new_controller(record)
        with ctl.lock:
            ctl.set_state(State.PENDING, f"resuming from {restore or 'the start'}")
        ctl.spawn(restore, fallback=fallback)
        return self.get_run(run_id)

    def stop(self, run_id: str, timeout: float | None) -> RunRecord:
        """Checkpoint and end a run for good (STOPPED)."""
        record = self.registry.get_run(run_id)
        if record.state.terminal:
            raise FailedPreconditionError(
                f"cannot stop runs/{run_id}: it is already {record.state.value}"
            )
        with self.lock:
            ctl = self.controllers.get(run_id)
        if ctl is None:  # INTERRUPTED, no worker: nothing to checkpoint
            self.emit(self.registry.set_state(run_id, State.STOPPED, "stopped"))
            return self.get_run(run_id)
        with ctl.command_lock:
            if ctl.kill_if_starting():
                # Still starting (importing, compiling): no step to save since its last
                # checkpoint, so the process was ended instead of waited for.
                with ctl.lock:
                    ctl.set_state(State.STOPPED, "stopped before the worker started")
                return self.get_run(run_id)
            started = time.perf_counter()
            ctl.command("stop", timeout)
            self.metrics.checkpoint_seconds.observe(time.perf_counter() - started)
            with ctl.lock:
                ctl.set_state(State.STOPPED, f"stopped at step {ctl.step}")
        return self.get_run(run_id)

    def save_checkpoint(self, run_id: str, timeout: float | None) -> CheckpointRecord:
        """Save a checkpoint of a RUNNING or PAUSED run now."""
        ctl = self._controller(run_id, "checkpoint", (State.RUNNING, State.PAUSED))
        started = time.perf_counter()
        path = ctl.command("checkpoint", timeout)
        self.metrics.checkpoint_seconds.observe(time.perf_counter() - started)
        parsed = parse_checkpoint_file_name(path)
        ckpt_id = checkpoint_id(path)
        try:
            return self.registry.get_checkpoint(run_id, ckpt_id)
        except NotFoundError:  # retention removed it already (keep_last=1 and a newer save)
            step = parsed.step if parsed else 0
            return CheckpointRecord(run_id, ckpt_id, step, path, 0, time.time())

    def list_checkpoints(self, run_id: str) -> list[CheckpointRecord]:
        """A run's checkpoints, oldest first."""
        self.registry.get_run(run_id)
        return self.registry.list_checkpoints(run_id)

    def is_active(self, run_id: str) -> bool:
        """True while the run has a worker (frames may still come)."""
        with self.lock:
            return run_id in self.controllers

    def events(self, run_id: str | None, from_sequence: int, limit: int) -> list[Event]:
        """Up to ``limit`` committed events with sequence >= ``from_sequence``, of one run
        (``run_id``) or of all (None), oldest first."""
        return self.registry.events(run_id, from_sequence, limit)

    def has_more_events(self, run_id: str, from_sequence: int) -> bool:
        """Whether an ended run has events at or after ``from_sequence`` (its stream ends when
        it has none)."""
        return bool(self.registry.events(run_id, from_sequence, 1))
