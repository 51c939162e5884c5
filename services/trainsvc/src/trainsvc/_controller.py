"""A run's worker process and the conversation with it.

One `RunController` per run that has (or is getting) a worker process. Its
reader thread receives the worker's typed messages (`trainsvc._protocol`),
records them in the run's `RunJournal` (every state change and checkpoint is
committed before the RPC that caused it returns), publishes frames and, when
the process dies unexpectedly, restarts it from the latest checkpoint or fails
the run. What it needs of the rest of the service is the narrow `RunHost`.
"""

from __future__ import annotations

import copy
import logging
import secrets
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, assert_never

from trainsvc._backends import (
    LocalBackend,
    ResourceRequest,
    WorkerBackend,
    WorkerConnection,
    WorkerHandle,
)
from trainsvc._domain import (
    DeadlineExceededError,
    EventType,
    FailedPreconditionError,
    RegistryUnwritableError,
    RunRecord,
    State,
    UnavailableError,
)
from trainsvc._journal import RunJournal
from trainsvc._protocol import (
    CheckpointSaved,
    CheckpointsDeleted,
    CheckpointSkipped,
    Command,
    CommandName,
    Completed,
    Fatal,
    FrameReady,
    Log,
    Progress,
    Ready,
    Reply,
    WorkerMessage,
)
from trainsvc._remote_store import RemoteStore
from trainsvc._worker import FAULT_EXIT_CODE, WorkerJob
from trainsvc.kinds import FrameData

log = logging.getLogger("trainsvc.manager")

CRASH_LOOP_CRASHES = 3
"""Consecutive crashes without checkpoint progress that make a crash loop."""
PROGRESS_PERSIST_S = 1.0
"""How often a run's step and metrics are written to the registry while it trains."""
DEFAULT_WAIT_S = 120.0
DISK_RETRY_S = 1.0
"""How often a state change the registry could not write (disk full) is retried."""
_LOG_LEVELS = {"ERROR": EventType.ERROR, "WARNING": EventType.WARNING}


class RunHost(Protocol):
    """What a controller needs from the service besides its run's journal."""

    @property
    def shutting_down(self) -> bool:
        """The service is stopping: a worker that exits is not restarted."""
        ...

    def publish_frame(self, run_id: str, frame: FrameData) -> None:
        """Send a frame to the run's subscribers."""
        ...

    def resume_from_path(self, name: str) -> str:
        """The verified file of a ``runs/{id}/checkpoints/{ckpt}`` a run was created from."""
        ...

    def controller_done(self, run_id: str, ctl: RunController) -> None:
        """The run's worker is gone for good: forget this controller (unless replaced)."""
        ...

    def reconcile_checkpoints(self, run_id: str, *, verify_all: bool) -> None:
        """Index the checkpoint files of the run's directory a dead worker did not report."""
        ...


@dataclass(frozen=True)
class WorkerSettings:
    """How worker processes are started."""

    mp: Any
    """The multiprocessing context (``spawn``)."""
    nice: int = 0
    cpus: frozenset[int] | None = None
    backend: WorkerBackend | None = None
    """Where workers run (``serve --backend``); None: processes here (`LocalBackend`)."""
    resume_lost: bool = False
    """A worker whose machine was lost (a Ray node died) restarts elsewhere at once
    (``serve --auto-resume``); otherwise its run becomes INTERRUPTED."""
    remote: RemoteStore | None = None
    """``serve --data-dir URL``: runs' checkpoints are published there (`_remote_store`)."""


def _disk_full_reason(fatal: str) -> str:
    """The worker's fatal error when it is a full disk (ENOSPC, SQLite's "disk is full")."""
    lowered = fatal.lower()
    if "no space left on device" in lowered or "errno 28" in lowered or "disk is full" in lowered:
        return fatal
    return ""


class RunController:
    """A run's worker process and the conversation with it.

    Attributes read by the manager: ``state``, ``step``, ``sps``, ``metrics`` (under
    ``lock``), ``ready`` (the worker is up), and ``command_lock`` (held around a command
    and the state change it causes).
    """

    def __init__(
        self,
        record: RunRecord,
        journal: RunJournal,
        host: RunHost,
        settings: WorkerSettings,
        checkpoint_dir: Path,
    ) -> None:
        self.run_id = record.id
        self.spec = record.spec
        self.config = copy.deepcopy(record.resolved_config)  # the registry shares its cached dicts
        self.journal = journal
        self.host = host
        self.settings = settings
        self.checkpoint_dir = checkpoint_dir
        self.state = record.state
        self.step = record.step
        self.restarts = record.restarts
        self.sps = 0.0
        self.metrics: dict[str, float] = dict(record.metrics)
        self.lock = threading.RLock()
        self.command_lock = threading.Lock()
        self.pending: dict[str, Future[tuple[bool, str]]] = {}
        self.process: WorkerHandle | None = None
        self.conn: WorkerConnection | None = None
        self.expect_exit = False
        self.no_progress_crashes = 0
        self.last_persist = 0.0
        self.attempt_start_ckpt = -1
        self.ready = threading.Event()
        self.last_fatal = ""
        self.fatal_permanent = False
        """The worker reported input a restart cannot fix: the run FAILS at once."""

    # -- process lifecycle ---------------------------------------------------

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
            nice=self.settings.nice,
            cpus=self.settings.cpus,
            restore_fallback=fallback and restore_path is not None,
            remote=self.settings.remote,
            keep_last=self.spec.policy.keep_last,
            keep_every=self.spec.policy.keep_every,
        )
        launch = self.backend.launch(
            job, ResourceRequest.from_spec(self.spec.resources), f"trainsvc-worker-{self.run_id}"
        )
        parent, process = launch.conn, launch.handle
        with self.lock:
            self.expect_exit = False
            self.ready.clear()
            self.conn = parent
            self.process = process
            self.attempt_start_ckpt = self.journal.latest_checkpoint_step()
        launch.start()
        if launch.note:  # e.g. no node has the resources (yet): the run waits, PENDING
            with self.lock:
                if self.state == State.PENDING:
                    self.set_state(State.PENDING, launch.note)
        threading.Thread(
            target=self._reader, args=(parent, process), name=f"reader-{self.run_id}", daemon=True
        ).start()
        log.info(
            "worker started",
            extra={"run": self.run_id, "pid": process.pid, "restore": restore_path},
        )

    @property
    def backend(self) -> WorkerBackend:
        """Where this run's workers start."""
        return self.settings.backend or LocalBackend(self.settings.mp)

    def end_worker(self) -> Any:
        """Say that the worker's exit is expected; return its process (None when gone)."""
        with self.lock:
            self.expect_exit = True
            return self.process

    def kill_if_starting(self) -> bool:
        """Kill a worker that is still starting (nothing trained since its last checkpoint).

        Returns:
            Whether it was killed (the caller records the run's state).
        """
        with self.lock:
            self.expect_exit = True
            proc = self.process
        if self.ready.is_set() or proc is None:
            return False
        proc.kill()
        return True

    def join(self, timeout: float) -> None:
        """Wait for the worker to exit; kill it past ``timeout``."""
        proc = self.process
        if proc is not None:
            proc.join(timeout)
            if proc.is_alive():
                proc.kill()

    def _reader(self, conn: WorkerConnection, process: WorkerHandle) -> None:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                break
            except Exception:  # an unpicklable message: treat the worker as broken
                log.exception("bad message from worker", extra={"run": self.run_id})
                break
            try:
                self.handle(msg)
            except Exception:
                log.exception("handling a worker message failed", extra={"run": self.run_id})
        process.join()
        conn.close()
        try:
            self._exited(process.exitcode, self.backend.lost(process))
        except RegistryUnwritableError as exc:  # the disk under the registry is full
            self._pause_for_disk(str(exc))

    def handle(self, msg: WorkerMessage) -> None:
        """Act on one message of the worker."""
        match msg:
            case FrameReady(frame):
                self.host.publish_frame(self.run_id, frame)
            case Progress(step, sps, metrics):
                with self.lock:
                    self.step, self.sps, self.metrics = step, sps, metrics
                now = time.monotonic()
                persist = now - self.last_persist >= PROGRESS_PERSIST_S
                if persist:
                    self.last_persist = now
                self.journal.progress(step, sps, metrics, persist=persist)
            case CheckpointSaved(path, step, emergency, size_bytes):
                self.journal.checkpoint_saved(path, step, emergency, size_bytes)
            case CheckpointsDeleted(paths):
                self.journal.checkpoints_gone(paths)
            case CheckpointSkipped(path, reason):
                self.journal.checkpoints_gone([path])
                self.journal.event(
                    EventType.WARNING,
                    f"skipped checkpoint {Path(path).name} (not counted as a crash): {reason}",
                    step=self.step,
                )
            case Reply(request_id, ok, detail):
                fut = self.pending.pop(request_id, None)
                if fut is not None:
                    fut.set_result((ok, detail))
            case Ready(step):
                with self.lock:
                    self.step = step
                    if self.state == State.PENDING:
                        self.set_state(State.RUNNING, f"worker started at step {self.step}")
                self.ready.set()
            case Completed(step):
                with self.lock:
                    self.expect_exit = True
                    self.step = step
                    self.set_state(State.COMPLETED, f"completed {self.step} steps")
            case Log(level, text):
                self.journal.event(_LOG_LEVELS.get(level, EventType.LOG), text, step=self.step)
            case Fatal(message, permanent):
                with self.lock:
                    self.last_fatal = message
                    self.fatal_permanent = permanent
            case _:  # not a message of the protocol: the reader logs it
                assert_never(msg)

    def set_state(self, state: State, message: str, **kw: Any) -> None:
        """Record the run's new state (call with ``lock`` held)."""
        previous = self.state
        self.state = state
        if state != State.RUNNING:
            self.sps = 0.0
        self.journal.state(
            state, message, step=self.step, steps_per_second=self.sps, metrics=self.metrics, **kw
        )
        log.info(
            "state %s -> %s",
            previous.value,
            state.value,
            extra={"run": self.run_id, "step": self.step, "reason": message},
        )

    def _exited(self, exitcode: int | None, lost: str = "") -> None:
        """The worker ended; ``lost``: why its machine was lost (not a crash of its own)."""
        for fut in list(self.pending.values()):
            fut.set_result((False, f"the worker exited (code {exitcode})"))
        self.pending.clear()
        with self.lock:
            self.process = None
            self.conn = None
            expected = self.expect_exit
            state = self.state
        self.journal.worker_gone()
        if expected or state.terminal or self.host.shutting_down:
            # A command that ended the worker (StopRun) records the run's state after the
            # worker's reply: let it finish first, so that frame streams (which end with
            # the controller) end after the final state, not just before it.
            if self.command_lock.acquire(timeout=DEFAULT_WAIT_S):
                self.command_lock.release()
            self.host.controller_done(self.run_id, self)
            return
        disk = _disk_full_reason(self.last_fatal) or self.journal.write_error
        if disk:  # a restart would fail the same way until space returns: not a crash
            self._pause_for_disk(disk)
            return
        if not lost:
            self._crashed(exitcode)
            return
        # The worker's machine was lost (a Ray node died): the run is INTERRUPTED, and
        # with --auto-resume restarts at once elsewhere, counted like a crash (so a run
        # whose nodes keep dying without checkpoint progress still ends FAILED).
        paused = state == State.PAUSED
        self.last_fatal = ""
        with self.lock:
            self.set_state(
                State.INTERRUPTED,
                f"interrupted: {lost}; "
                + (
                    "restarting from the newest checkpoint (--auto-resume)"
                    if self.settings.resume_lost
                    else "ResumeRun continues from the newest checkpoint"
                ),
            )
        if self.settings.resume_lost:
            self._crashed(exitcode, lost, paused=paused)
        else:
            self.host.controller_done(self.run_id, self)

    def _pause_for_disk(self, reason: str) -> None:
        """The worker died for want of disk space: record the run PAUSED with the reason.

        The worker is gone, so ResumeRun starts a new one from the newest checkpoint (once
        space returns). The registry may be on the same full disk: the change is retried
        until it commits, unless something else changed the run meanwhile.
        """
        self.last_fatal = ""
        self.host.controller_done(self.run_id, self)
        message = (
            f"paused: the disk is full ({reason[:300]}); free space, then ResumeRun "
            "continues from the newest checkpoint"
        )
        log.error(message, extra={"run": self.run_id})
        while not self.host.shutting_down:
            try:
                if self.journal.stored_state() not in (State.PENDING, State.RUNNING):
                    return  # stopped (or otherwise ended) by a client meanwhile
                with self.lock:
                    self.set_state(State.PAUSED, message)
                return
            except RegistryUnwritableError:
                time.sleep(DISK_RETRY_S)

    def _crashed(self, exitcode: int | None, lost: str = "", *, paused: bool = False) -> None:
        # A worker that died (its process, or its node) may have saved — and, by retention,
        # deleted — checkpoints it never reported: index the directory before restarting,
        # or the restart could find only deleted files on record and begin at step 0.
        try:
            self.host.reconcile_checkpoints(self.run_id, verify_all=False)
        except Exception:
            log.exception("reconciling the checkpoint index failed", extra={"run": self.run_id})
        reason = lost or self.last_fatal or f"exit code {exitcode}"
        if exitcode == FAULT_EXIT_CODE:
            reason += " (fault injection hook)"
        latest = self.journal.latest_checkpoint_step()
        if latest > self.attempt_start_ckpt:
            self.no_progress_crashes = 1
        else:
            self.no_progress_crashes += 1
        permanent, self.fatal_permanent = self.fatal_permanent, False
        self.last_fatal = ""
        if not permanent:
            self.restarts += 1
            self.journal.worker_restarted()
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
            self.journal.event(EventType.ERROR, message, step=self.step)
            with self.lock:
                self.set_state(State.FAILED, message, restarts=self.restarts)
            self.host.controller_done(self.run_id, self)
            return
        restore = self.journal.latest_checkpoint_path()
        fallback = restore is not None
        warn = (
            f"worker crashed ({reason}); restart {self.restarts}/{self.spec.max_restarts} "
            f"from {restore or 'the start'}"
        )
        self.journal.event(EventType.WARNING, warn, step=self.step)
        paused = paused or self.state == State.PAUSED  # a paused run comes back paused
        if not paused:
            with self.lock:
                self.set_state(State.PENDING, warn, restarts=self.restarts)
        if restore is None and self.spec.resume_from:
            restore = self.host.resume_from_path(self.spec.resume_from)
        self.spawn(restore, start_paused=paused, fallback=fallback)

    # -- commands ------------------------------------------------------------

    def command(self, command: CommandName, timeout: float | None) -> str:
        """Send a command and wait for the worker's reply; return its detail."""
        with self.lock:
            conn = self.conn
            if conn is None:
                raise FailedPreconditionError(f"runs/{self.run_id} has no running worker")
            req = secrets.token_hex(8)
            fut: Future[tuple[bool, str]] = Future()
            self.pending[req] = fut
            try:
                conn.send(Command(command, req))
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
