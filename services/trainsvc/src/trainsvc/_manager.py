"""The run manager: the state machine, worker processes, restarts and crash loops.

One `_RunController` per run that has (or is getting) a worker process. Its
reader thread receives the worker's messages, updates the registry (every
state change and checkpoint is committed before the RPC that caused it
returns), publishes frames and, when the process dies unexpectedly, restarts
it from the latest checkpoint or fails the run.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import multiprocessing
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from trainsvc._domain import (
    CheckpointRecord,
    DeadlineExceededError,
    Event,
    EventType,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    RegistryUnwritableError,
    RunRecord,
    RunSpec,
    State,
    UnavailableError,
    parse_checkpoint_id,
    parse_checkpoint_name,
)
from trainsvc._metrics import Metrics
from trainsvc._paths import InputRoots
from trainsvc._registry import Registry
from trainsvc._worker import FAULT_EXIT_CODE, WorkerJob, checkpoint_step, worker_main
from trainsvc.kinds import FrameData, get_kind

log = logging.getLogger("trainsvc.manager")

CRASH_LOOP_CRASHES = 3
"""Consecutive crashes without checkpoint progress that make a crash loop."""
PROGRESS_PERSIST_S = 1.0
"""How often a run's step and metrics are written to the registry while it trains."""
DEFAULT_WAIT_S = 120.0
DISK_RETRY_S = 1.0
"""How often a state change the registry could not write (disk full) is retried."""


def _disk_full_reason(fatal: str) -> str:
    """The worker's fatal error when it is a full disk (ENOSPC, SQLite's "disk is full")."""
    lowered = fatal.lower()
    if "no space left on device" in lowered or "errno 28" in lowered or "disk is full" in lowered:
        return fatal
    return ""


class _RunController:
    """A run's worker process and the conversation with it."""

    def __init__(self, manager: RunManager, record: RunRecord) -> None:
        self.m = manager
        self.run_id = record.id
        self.spec = record.spec
        self.config = copy.deepcopy(record.resolved_config)  # the registry shares its cached dicts
        self.state = record.state
        self.step = record.step
        self.restarts = record.restarts
        self.sps = 0.0
        self.metrics: dict[str, float] = dict(record.metrics)
        self.lock = threading.RLock()
        self.command_lock = threading.Lock()
        self.pending: dict[str, Future[tuple[bool, Any]]] = {}
        self.process: Any = None
        self.conn: Connection | None = None
        self.expect_exit = False
        self.no_progress_crashes = 0
        self.last_persist = 0.0
        self.attempt_start_ckpt = -1
        self.ready = threading.Event()
        self.last_fatal = ""
        self.fatal_permanent = False
        """The worker reported input a restart cannot fix: the run FAILS at once."""

    # -- process lifecycle ---------------------------------------------------

    @property
    def checkpoint_dir(self) -> Path:
        return self.m.run_dir(self.run_id) / "checkpoints"

    def spawn(
        self, restore_path: str | None, *, start_paused: bool = False, fallback: bool = False
    ) -> None:
        """Start a worker; ``fallback``: ``restore_path`` is the run's newest checkpoint, and
        the worker restores the newest valid one at or before it when that one is unusable."""
        job = WorkerJob(
            run_id=self.run_id,
            kind=self.spec.kind,
            config=self.config,
            checkpoint_dir=str(self.checkpoint_dir),
            step_budget=self.spec.step_budget,
            restore_path=restore_path,
            start_paused=start_paused,
            nice=self.m.worker_nice,
            cpus=self.m.worker_cpus,
            restore_fallback=fallback and restore_path is not None,
        )
        parent, child = self.m.mp.Pipe(duplex=True)
        process = self.m.mp.Process(
            target=worker_main,
            args=(child, job),
            name=f"trainsvc-worker-{self.run_id}",
            daemon=False,
        )
        with self.lock:
            self.expect_exit = False
            self.ready.clear()
            self.conn = parent
            self.process = process
            self.attempt_start_ckpt = self.m.latest_checkpoint_step(self.run_id)
        process.start()
        child.close()
        threading.Thread(
            target=self._reader, args=(parent, process), name=f"reader-{self.run_id}", daemon=True
        ).start()
        log.info(
            "worker started",
            extra={"run": self.run_id, "pid": process.pid, "restore": restore_path},
        )

    def _reader(self, conn: Connection, process: Any) -> None:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                break
            except Exception:  # an unpicklable message: treat the worker as broken
                log.exception("bad message from worker", extra={"run": self.run_id})
                break
            try:
                self._handle(msg)
            except Exception:
                log.exception("handling a worker message failed", extra={"run": self.run_id})
        process.join()
        conn.close()
        try:
            self._exited(process.exitcode)
        except RegistryUnwritableError as exc:  # the disk under the registry is full
            self._pause_for_disk(str(exc))

    def _handle(self, msg: tuple[Any, ...]) -> None:
        kind = msg[0]
        if kind == "frame":
            frame: FrameData = msg[1]
            self.m.frame_sink(self.run_id, frame)
        elif kind == "progress":
            _, step, sps, metrics = msg
            with self.lock:
                self.step, self.sps, self.metrics = step, sps, metrics
            self.m.metrics.steps_per_second.labels(self.run_id).set(sps)
            self.m.metrics.run_step.labels(self.run_id).set(step)
            now = time.monotonic()
            if now - self.last_persist >= PROGRESS_PERSIST_S:
                self.last_persist = now
                self.m.registry.update_progress(self.run_id, step, sps, metrics)
        elif kind == "checkpoint":
            _, path, step, emergency = msg
            p = Path(path)
            size = p.stat().st_size if p.exists() else 0
            stem = p.name.split(".safetensors")[0]
            record = CheckpointRecord(self.run_id, stem, step, path, size, time.time(), emergency)
            self.m.emit(self.m.registry.add_checkpoint(record))
        elif kind == "deleted":
            ids = [Path(p).name.split(".safetensors")[0] for p in msg[1]]
            self.m.registry.remove_checkpoints(self.run_id, ids)
        elif kind == "skipped":  # an unusable checkpoint the worker fell back over
            _, path, reason = msg
            p = Path(path)
            self.m.registry.remove_checkpoints(self.run_id, [p.name.split(".safetensors")[0]])
            self.m.emit(
                self.m.registry.add_event(
                    self.run_id,
                    EventType.WARNING,
                    f"skipped checkpoint {p.name} (not counted as a crash): {reason}",
                    step=self.step,
                )
            )
        elif kind == "reply":
            _, req, ok, detail = msg
            fut = self.pending.pop(req, None)
            if fut is not None:
                fut.set_result((ok, detail))
        elif kind == "ready":
            with self.lock:
                self.step = msg[1]
                if self.state == State.PENDING:
                    self._set_state(State.RUNNING, f"worker started at step {self.step}")
            self.ready.set()
        elif kind == "completed":
            with self.lock:
                self.expect_exit = True
                self.step = msg[1]
                self._set_state(State.COMPLETED, f"completed {self.step} steps")
        elif kind == "log":
            _, level, text = msg
            etype = {"ERROR": EventType.ERROR, "WARNING": EventType.WARNING}.get(
                level, EventType.LOG
            )
            self.m.emit(self.m.registry.add_event(self.run_id, etype, text, step=self.step))
        elif kind == "fatal":
            with self.lock:
                self.last_fatal = str(msg[1])
                self.fatal_permanent = bool(msg[2]) if len(msg) > 2 else False

    def _set_state(self, state: State, message: str, **kw: Any) -> None:
        previous = self.state
        self.state = state
        if state != State.RUNNING:
            self.sps = 0.0
        self.m.registry.update_progress(self.run_id, self.step, self.sps, self.metrics)
        self.m.emit(self.m.registry.set_state(self.run_id, state, message, step=self.step, **kw))
        log.info(
            "state %s -> %s",
            previous.value,
            state.value,
            extra={"run": self.run_id, "step": self.step, "reason": message},
        )

    def _exited(self, exitcode: int | None) -> None:
        for fut in list(self.pending.values()):
            fut.set_result((False, f"the worker exited (code {exitcode})"))
        self.pending.clear()
        with self.lock:
            self.process = None
            self.conn = None
            expected = self.expect_exit
            state = self.state
        for gauge in (self.m.metrics.steps_per_second, self.m.metrics.run_step):
            with contextlib.suppress(KeyError):
                gauge.remove(self.run_id)
        if expected or state.terminal or self.m.shutting_down:
            # A command that ended the worker (StopRun) records the run's state after the
            # worker's reply: let it finish first, so that frame streams (which end with
            # the controller) end after the final state, not just before it.
            if self.command_lock.acquire(timeout=DEFAULT_WAIT_S):
                self.command_lock.release()
            self.m.controller_done(self.run_id, self)
            return
        disk = _disk_full_reason(self.last_fatal) or self.m.registry.write_error
        if disk:  # a restart would fail the same way until space returns: not a crash
            self._pause_for_disk(disk)
            return
        self._crashed(exitcode)

    def _pause_for_disk(self, reason: str) -> None:
        """The worker died for want of disk space: record the run PAUSED with the reason.

        The worker is gone, so ResumeRun starts a new one from the newest checkpoint (once
        space returns). The registry may be on the same full disk: the change is retried
        until it commits, unless something else changed the run meanwhile.
        """
        self.last_fatal = ""
        self.m.controller_done(self.run_id, self)
        message = (
            f"paused: the disk is full ({reason[:300]}); free space, then ResumeRun "
            "continues from the newest checkpoint"
        )
        log.error(message, extra={"run": self.run_id})
        while not self.m.shutting_down:
            try:
                if self.m.registry.get_run(self.run_id).state not in (
                    State.PENDING,
                    State.RUNNING,
                ):
                    return  # stopped (or otherwise ended) by a client meanwhile
                with self.lock:
                    self._set_state(State.PAUSED, message)
                return
            except RegistryUnwritableError:
                time.sleep(DISK_RETRY_S)

    def _crashed(self, exitcode: int | None) -> None:
        reason = self.last_fatal or f"exit code {exitcode}"
        if exitcode == FAULT_EXIT_CODE:
            reason += " (fault injection hook)"
        latest = self.m.latest_checkpoint_step(self.run_id)
        if latest > self.attempt_start_ckpt:
            self.no_progress_crashes = 1
        else:
            self.no_progress_crashes += 1
        permanent, self.fatal_permanent = self.fatal_permanent, False
        self.last_fatal = ""
        if not permanent:
            self.restarts += 1
            self.m.metrics.worker_restarts.inc()
        if permanent:  # invalid input: a restart would fail the same way
            message = reason
        elif self.no_progress_crashes >= CRASH_LOOP_CRASHES:
            message = (
                f"crash loop: the worker crashed {self.no_progress_crashes} times without step "
                f"progress (last: {reason}, at checkpoint step {max(latest, 0)})"
            )
        elif self.restarts > self.spec.max_restarts:
            message = f"the worker crashed {self.restarts} times (max_restarts={self.spec.max_restarts}); last: {reason}"
        else:
            message = ""
        if message:
            self.m.emit(
                self.m.registry.add_event(self.run_id, EventType.ERROR, message, step=self.step)
            )
            with self.lock:
                self._set_state(State.FAILED, message, restarts=self.restarts)
            self.m.controller_done(self.run_id, self)
            return
        restore = self.m.latest_checkpoint_path(self.run_id)
        fallback = restore is not None
        warn = (
            f"worker crashed ({reason}); restart {self.restarts}/{self.spec.max_restarts} "
            f"from {restore or 'the start'}"
        )
        self.m.emit(self.m.registry.add_event(self.run_id, EventType.WARNING, warn, step=self.step))
        paused = self.state == State.PAUSED  # a paused run comes back paused
        if not paused:
            with self.lock:
                self._set_state(State.PENDING, warn, restarts=self.restarts)
        if restore is None and self.spec.resume_from:
            restore = self.m.resolve_resume_from(self.spec.resume_from).path
        self.spawn(restore, start_paused=paused, fallback=fallback)

    # -- commands ------------------------------------------------------------

    def command(self, command: str, timeout: float | None) -> Any:
        """Send a command and wait for the worker's reply; return its detail."""
        with self.lock:
            conn = self.conn
            if conn is None:
                raise FailedPreconditionError(f"runs/{self.run_id} has no running worker")
            req = secrets.token_hex(8)
            fut: Future[tuple[bool, Any]] = Future()
            self.pending[req] = fut
            try:
                conn.send((command, req))
            except (OSError, ValueError):
                self.pending.pop(req, None)
                raise UnavailableError(f"runs/{self.run_id}: the worker is not reachable") from None
        try:
            ok, detail = fut.result(
                timeout=DEFAULT_WAIT_S if timeout is None else max(timeout, 0.0)
            )
        except FutureTimeout:
            raise DeadlineExceededError(
                f"runs/{self.run_id}: the worker did not finish {command!r} in time; it will still do it"
            ) from None
        if not ok:
            raise UnavailableError(f"runs/{self.run_id}: {command} failed: {detail}")
        return detail


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
    ) -> None:
        self.registry = registry
        self.input_roots = input_roots or InputRoots.of([Path.cwd()])
        self.worker_nice = worker_nice
        self.worker_cpus = worker_cpus
        self.data_dir = data_dir
        self.metrics = metrics
        self.frame_sink = frame_sink
        self.on_event = on_event
        self.on_run_end = on_run_end
        self.mp = multiprocessing.get_context("spawn")
        self.controllers: dict[str, _RunController] = {}
        self.lock = threading.RLock()
        self.shutting_down = False
        metrics.watch_states(self.state_counts)

    # -- helpers -------------------------------------------------------------

    def emit(self, event: Event) -> None:
        """Tell event followers that a new event was committed."""
        self.on_event(event)

    def run_dir(self, run_id: str) -> Path:
        """The run's directory under the data directory."""
        return self.data_dir / "runs" / run_id

    def latest_checkpoint_step(self, run_id: str) -> int:
        """Step of the run's newest indexed checkpoint, -1 when none."""
        ckpts = self.registry.list_checkpoints(run_id)
        return max((c.step for c in ckpts), default=-1)

    def latest_checkpoint_path(self, run_id: str) -> str | None:
        """Path of the newest indexed checkpoint that still exists."""
        ckpts = [c for c in self.registry.list_checkpoints(run_id) if Path(c.path).exists()]
        if not ckpts:
            return None
        return max(ckpts, key=lambda c: (c.step, c.create_time)).path

    def _safe_path(self, record: CheckpointRecord, field: str = "checkpoint") -> CheckpointRecord:
        """An indexed checkpoint a client chose: inside its run's directory, present and valid.

        Raises:
            InvalidArgumentError: outside the run directory, or corrupt (every CRC is checked,
                so that a run never resumes into a crash loop on a file that cannot load).
            NotFoundError: the file is gone.
        """
        from trainsvc_checkpoint import CheckpointNotFoundError, CorruptCheckpointError, verify

        root = self.run_dir(record.run_id).resolve()
        path = Path(record.path).resolve()
        if root not in path.parents:
            raise InvalidArgumentError(field, f"{record.name} lies outside its run directory")
        if not path.exists():
            raise NotFoundError(f"{record.name}: the file {path} is gone")
        try:
            verify(path)
        except CheckpointNotFoundError:
            raise NotFoundError(f"{record.name}: the file {path} is gone") from None
        except CorruptCheckpointError as exc:
            raise InvalidArgumentError(
                field, f"{record.name} is corrupt and cannot be restored: {str(exc)[:300]}"
            ) from None
        return record

    def resolve_resume_from(self, name: str) -> CheckpointRecord:
        """Resolve ``runs/{id}/checkpoints/{ckpt}`` to an indexed file inside that run's directory."""
        run_id, ckpt_id = parse_checkpoint_name(name, "resume_from")
        self.registry.get_run(run_id)
        return self._safe_path(self.registry.get_checkpoint(run_id, ckpt_id), "resume_from")

    def state_counts(self) -> dict[State, int]:
        """Runs per state (for the metrics endpoint)."""
        counts: dict[State, int] = {}
        for state in State:
            counts[state] = len(self.registry.runs_in_states((state,)))
        return counts

    def controller_done(self, run_id: str, ctl: _RunController) -> None:
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
        """Make a run's checkpoint index match its directory, which is the truth.

        On recovery the index can be stale: a SIGKILL may land between a save (or a
        retention delete) and its message to the service. Files the index lacks are
        verified and indexed, entries whose file is gone or unusable are dropped, and
        ``verify_all`` (runs that may resume) verifies every indexed file too.
        """
        from trainsvc_checkpoint import reconcile

        indexed = self.registry.list_checkpoints(run_id)
        ckpt_dir = self.run_dir(run_id) / "checkpoints"
        result = reconcile(
            ckpt_dir, [c.checkpoint_id for c in indexed], trust_indexed=not verify_all
        )
        if not result.added and not result.removed:
            return
        added = [
            CheckpointRecord(
                run_id,
                v.file.checkpoint_id,
                v.file.step,
                str(v.file.path),
                v.size_bytes,
                v.mtime,
                v.file.emergency,
            )
            for v in result.added
        ]
        unusable = {u.file.checkpoint_id: u.reason for u in result.unusable}
        parts = []
        if added:
            parts.append("indexed " + ", ".join(c.checkpoint_id for c in added))
        for cid in result.removed:
            why = f"unusable: {unusable[cid][:300]}" if cid in unusable else "the file is gone"
            parts.append(f"dropped {cid} ({why})")
        message = f"checkpoint index reconciled with {ckpt_dir}: " + "; ".join(parts)
        etype = EventType.WARNING if unusable else EventType.LOG
        self.emit(
            self.registry.reconcile_checkpoints(run_id, added, list(result.removed), message, etype)
        )
        log.warning(message, extra={"run": run_id})

    def shutdown(self, timeout: float = 60.0) -> None:
        """Checkpoint every active run and stop its worker; the runs become INTERRUPTED."""
        self.shutting_down = True
        with self.lock:
            controllers = list(self.controllers.values())
        deadline = time.monotonic() + timeout
        for ctl in controllers:
            with ctl.lock:
                ctl.expect_exit = True
                proc = ctl.process
            if not ctl.ready.is_set() and proc is not None:
                proc.kill()  # still starting: nothing trained since its last checkpoint
            try:
                # A run that has just ended is already saved; its worker is exiting by itself.
                if ctl.ready.is_set() and not ctl.state.terminal:
                    ctl.command("shutdown", max(0.1, deadline - time.monotonic()))
            except Exception as exc:
                log.warning("shutdown checkpoint failed: %s", exc, extra={"run": ctl.run_id})
            if not ctl.state.terminal and ctl.state != State.PAUSED:  # paused runs stay paused
                with ctl.lock:
                    ctl._set_state(State.INTERRUPTED, "the service shut down; resumable")
        for ctl in controllers:
            proc = ctl.process
            if proc is not None:
                proc.join(max(0.1, deadline - time.monotonic()))
                if proc.is_alive():
                    proc.kill()

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
        ctl = _RunController(self, record)
        with self.lock:
            self.controllers[run_id] = ctl
        ctl.spawn(restore)
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

    def _controller(self, run_id: str, action: str, allowed: tuple[State, ...]) -> _RunController:
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
                ctl._set_state(State.PAUSED, f"paused at step {ctl.step}")
        return self.get_run(run_id)

    def resume(self, run_id: str, checkpoint: str, timeout: float | None) -> RunRecord:
        """Continue a PAUSED run, or restart an INTERRUPTED one from its checkpoint."""
        ckpt_id = parse_checkpoint_id(checkpoint, "checkpoint") if checkpoint else ""
        record = self.registry.get_run(run_id)
        restore: str | None = None
        if ckpt_id:
            ckpt = self._safe_path(self.registry.get_checkpoint(run_id, ckpt_id))
            restore = ckpt.path
            newest = self.latest_checkpoint_step(run_id)
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
                    ctl._set_state(State.RUNNING, f"resumed at step {ctl.step}")
            return self.get_run(run_id)
        if ctl is not None:  # resume from another checkpoint: replace the paused worker
            with ctl.command_lock, ctl.lock:
                ctl.expect_exit = True
            ctl.command("shutdown", timeout)
            proc = ctl.process
            if proc is not None:
                proc.join(DEFAULT_WAIT_S)
        fallback = False
        if restore is None:
            # Files saved while the index could not be written (a SIGKILL, a full disk)
            # are indexed first, so the run continues from its newest checkpoint.
            self.reconcile_checkpoints(run_id, verify_all=False)
            restore = self.latest_checkpoint_path(run_id)
            fallback = restore is not None
        if restore is None and record.spec.resume_from:
            restore = self.resolve_resume_from(record.spec.resume_from).path
        ctl = _RunController(self, record)
        with self.lock:
            self.controllers[run_id] = ctl
        with ctl.lock:
            ctl._set_state(State.PENDING, f"resuming from {restore or 'the start'}")
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
            with ctl.lock:
                ctl.expect_exit = True
                proc = ctl.process
            if not ctl.ready.is_set() and proc is not None:
                # Still starting (importing, compiling): no step to save since its last
                # checkpoint, so end the process instead of waiting for it.
                proc.kill()
                with ctl.lock:
                    ctl._set_state(State.STOPPED, "stopped before the worker started")
                return self.get_run(run_id)
            started = time.perf_counter()
            ctl.command("stop", timeout)
            self.metrics.checkpoint_seconds.observe(time.perf_counter() - started)
            with ctl.lock:
                ctl._set_state(State.STOPPED, f"stopped at step {ctl.step}")
        return self.get_run(run_id)

    def save_checkpoint(self, run_id: str, timeout: float | None) -> CheckpointRecord:
        """Save a checkpoint of a RUNNING or PAUSED run now."""
        ctl = self._controller(run_id, "checkpoint", (State.RUNNING, State.PAUSED))
        started = time.perf_counter()
        path = ctl.command("checkpoint", timeout)
        self.metrics.checkpoint_seconds.observe(time.perf_counter() - started)
        parsed = checkpoint_step(Path(path))
        stem = Path(path).name.split(".safetensors")[0]
        try:
            return self.registry.get_checkpoint(run_id, stem)
        except NotFoundError:  # retention removed it already (keep_last=1 and a newer save)
            step = parsed[0] if parsed else 0
            return CheckpointRecord(run_id, stem, step, path, 0, time.time())

    def list_checkpoints(self, run_id: str) -> list[CheckpointRecord]:
        """A run's checkpoints, oldest first."""
        self.registry.get_run(run_id)
        return self.registry.list_checkpoints(run_id)

    def is_active(self, run_id: str) -> bool:
        """True while the run has a worker (frames may still come)."""
        with self.lock:
            return run_id in self.controllers
