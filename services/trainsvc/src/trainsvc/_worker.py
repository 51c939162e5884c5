"""The worker process: one per run, so a crash, OOM or hung compile never takes the service down.

It builds the run's trainer through its kind adapter and trains in chunks,
checking between steps for commands from the service (the pause point). It
talks to the service over a multiprocessing connection (a pipe; a TCP socket for
a worker on a Ray node, ``trainsvc._ray_backend``) in the typed messages of
`trainsvc._protocol`: it receives `Command` and sends `Ready`, `Progress`,
`FrameReady`, `CheckpointSaved`, `CheckpointsDeleted`, `CheckpointSkipped`,
`Reply`, `Completed`, `Log` and `Fatal`.

Test hook (fault injection): when the environment variable
``TRAINSVC_FAULT_CRASH_AT_STEP`` is set to k, the worker calls ``os._exit(86)``
as soon as its run reaches step k; the service sees a real crashed process.
The Ray backend passes the service's value on to its workers' processes.

With a URL data directory (``serve --data-dir s3://...``, `trainsvc._remote_store`)
the run's trainer still writes into ``checkpoint_dir``, now a local staging
directory: the worker publishes each new file to the run's remote prefix, applies
retention there, and reports URLs; to resume it fetches the checkpoint first.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from trainsvc_checkpoint import parse_checkpoint_file_name

from trainsvc import _protocol as proto
from trainsvc._cpus import pin_process
from trainsvc._remote_store import RemoteRunCheckpoints, RemoteStore, clear_staging, is_url
from trainsvc.kinds import RunInputError

FAULT_ENV = "TRAINSVC_FAULT_CRASH_AT_STEP"
FAULT_EXIT_CODE = 86
CHUNK_SECONDS = 0.25


@dataclass(frozen=True)
class WorkerJob:
    """What a worker needs to run (pickled to the spawned process)."""

    run_id: str
    kind: str
    config: dict[str, Any]
    checkpoint_dir: str
    step_budget: int
    restore_path: str | None
    start_paused: bool = False
    nice: int = 0
    """Added to the worker's CPU niceness, so the service answers promptly on busy CPUs."""
    cpus: frozenset[int] | None = None
    """CPUs the worker is pinned to (``serve --worker-cpus``); None: those of the service."""
    restore_fallback: bool = False
    """``restore_path`` is the run's newest checkpoint (not one the client chose): when it is
    corrupt or gone, restore the newest valid older one of the run's directory instead."""
    remote: RemoteStore | None = None
    """The service's URL data directory: checkpoints are published there (``checkpoint_dir``
    only stages them), and ``restore_path`` may be a URL."""
    keep_last: int = 5
    """The run's retention, applied to the remote prefix (``remote``)."""
    keep_every: int = 0


def _step(path: Path, default: int) -> int:
    """The step of a checkpoint file, ``default`` for a file that is not one."""
    parsed = parse_checkpoint_file_name(path)
    return parsed.step if parsed is not None else default


class _Worker:
    def __init__(self, conn: Connection, job: WorkerJob) -> None:
        self.conn = conn
        self.job = job
        self.send_lock = threading.Lock()
        self.parent_pid = os.getppid()
        self.terminate = threading.Event()
        fault = os.environ.get(FAULT_ENV, "")
        self.fault_step = int(fault) if fault.isdigit() else None
        self.known: set[Path] = set()
        self.remote: RemoteRunCheckpoints | None = None
        self.published: set[str] = set()
        """Names of the staged files already published (``remote``)."""

    def send(self, msg: proto.WorkerMessage) -> None:
        try:
            with self.send_lock:
                self.conn.send(msg)
        except (BrokenPipeError, EOFError, OSError):
            os._exit(0)  # the service is gone: nothing to report to

    def check_parent(self) -> None:
        if os.getppid() != self.parent_pid:
            os._exit(0)  # orphaned by a killed service; the restarted one resumes the run

    def report_checkpoints(self, adapter: Any) -> None:
        files = set(adapter.checkpoint_files())
        if self.remote is not None:
            self.publish_checkpoints(files)
            return
        for path in sorted(files - self.known, key=lambda p: _step(p, 0)):
            parsed = parse_checkpoint_file_name(path)
            if parsed is not None:
                self.send(proto.CheckpointSaved(str(path), parsed.step, parsed.emergency))
        gone = self.known - files
        if gone:
            self.send(proto.CheckpointsDeleted(tuple(sorted(str(p) for p in gone))))
        self.known = files

    def publish_checkpoints(self, files: set[Path]) -> None:
        """Publish the staged files not yet published (oldest first), report their URLs
        and what the remote retention deleted after each."""
        assert self.remote is not None
        fresh = sorted(
            (p for p in files if p.name not in self.published), key=lambda p: _step(p, 0)
        )
        for path in fresh:
            parsed = parse_checkpoint_file_name(path)
            if parsed is None:
                continue
            try:
                published = self.remote.publish(path)
            except FileNotFoundError:
                continue  # the trainer's own retention removed it meanwhile (a newer one exists)
            self.published.add(path.name)
            self.send(
                proto.CheckpointSaved(
                    published.url, parsed.step, parsed.emergency, published.size_bytes
                )
            )
            if published.deleted:
                self.send(proto.CheckpointsDeleted(published.deleted))
        self.published &= {p.name for p in files}
        self.known = files

    def save(self, adapter: Any, *, emergency: bool = False) -> str:
        path = adapter.save_checkpoint(emergency=emergency)
        self.report_checkpoints(adapter)
        return str(path) if self.remote is None else self.remote.url_of(Path(path).name)

    def main(self) -> None:
        from trainsvc.kinds import get_kind

        job = self.job
        kind = get_kind(job.kind)
        ckpt_dir = Path(job.checkpoint_dir)
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        if job.remote is not None:  # the staging directory starts empty: the prefix is the truth
            clear_staging(ckpt_dir)
            self.remote = RemoteRunCheckpoints(
                job.remote, job.run_id, ckpt_dir, keep_last=job.keep_last, keep_every=job.keep_every
            )
        adapter = kind.create(job.config, ckpt_dir, lambda f: self.send(proto.FrameReady(f)))
        if job.restore_path:
            path, step = self.restore(adapter, job.restore_path, ckpt_dir)
            self.send(proto.Log("INFO", f"restored step {step} from {path}"))
        self.known = set(adapter.checkpoint_files())
        self.published = {p.name for p in self.known}  # the fetched one is published already
        self.send(proto.Ready(adapter.step))
        paused = job.start_paused
        try:
            self.loop(adapter, paused)
        finally:
            adapter.close()

    def restore(self, adapter: Any, path: str, ckpt_dir: Path) -> tuple[str, int]:
        """Restore ``path``; with ``restore_fallback``, the newest valid checkpoint at or before it.

        A remote checkpoint (a URL) is fetched into the staging directory and verified
        first. A corrupt or missing file is reported (``skipped``) and never crashes the
        worker: a restart could only fail the same way.

        Raises:
            RunInputError: no usable checkpoint (the run cannot continue from one).
        """
        from trainsvc_checkpoint import CheckpointNotFoundError, CorruptCheckpointError, scan

        candidates = [path]
        if self.job.restore_fallback:
            limit = _step(Path(path), -1)
            if self.remote is not None and is_url(path):
                candidates += self.remote.older(limit, path)
            else:
                older = sorted(
                    (c for c in scan(ckpt_dir) if c.step <= limit and c.path != Path(path)),
                    key=lambda c: (c.step, c.emergency),
                    reverse=True,
                )
                candidates += [str(c.path) for c in older]
        reasons = []
        for candidate in candidates:
            local: Path | None = None
            try:
                if self.remote is not None and is_url(candidate):
                    from trainsvc_checkpoint import verify

                    local = self.remote.fetch(candidate)
                    verify(local)  # before a trainer that loads it lazily (the engine) starts
                    return candidate, int(adapter.restore(local))
                return candidate, int(adapter.restore(Path(candidate)))
            except (CorruptCheckpointError, CheckpointNotFoundError) as exc:
                if local is not None:
                    local.unlink(missing_ok=True)
                reason = f"{type(exc).__name__}: {str(exc)[:500]}"
                reasons.append(f"{Path(candidate).name}: {reason}")
                self.send(proto.CheckpointSkipped(candidate, reason))
        raise RunInputError(
            "no usable checkpoint to resume from: " + "; ".join(reasons)
            if self.job.restore_fallback
            else f"the checkpoint {Path(path).name} is unusable: {reasons[0]}"
        )

    def loop(self, adapter: Any, paused: bool) -> None:
        budget = self.job.step_budget
        chunk = 1
        while True:
            self.check_parent()
            if self.terminate.is_set():
                self.send(proto.Reply(proto.SIGNAL_REQUEST, True, self.save(adapter)))
                return
            while self.conn.poll(None if paused else 0):
                command: proto.Command = self.conn.recv()
                match command.name:
                    case "pause":
                        paused = True
                        self.send(proto.Reply(command.request_id, True, self.save(adapter)))
                    case "resume":
                        paused = False
                        self.send(proto.Reply(command.request_id, True, ""))
                    case "checkpoint":
                        self.send(proto.Reply(command.request_id, True, self.save(adapter)))
                    case "stop" | "shutdown":
                        self.send(proto.Reply(command.request_id, True, self.save(adapter)))
                        return
                if not paused:
                    break
            if paused:
                continue
            if adapter.step >= budget:
                if not any(_step(p, -1) == adapter.step for p in self.known):
                    self.save(adapter)
                self.report_checkpoints(adapter)
                self.send(proto.Completed(adapter.step))
                return
            n = min(chunk, budget - adapter.step)
            if self.fault_step is not None:
                if adapter.step >= self.fault_step:
                    os._exit(FAULT_EXIT_CODE)
                n = min(n, self.fault_step - adapter.step)
            t0 = time.perf_counter()
            done = adapter.train(n, lambda: self.conn.poll() or self.terminate.is_set())
            elapsed = time.perf_counter() - t0
            self.report_checkpoints(adapter)
            rate = done / elapsed if elapsed > 0 and done else 0.0
            self.send(proto.Progress(adapter.step, rate, dict(adapter.metrics)))
            if done and elapsed > 0:  # aim for chunks of ~CHUNK_SECONDS between reports
                chunk = max(1, min(10_000, int(done * CHUNK_SECONDS / elapsed)))


def worker_main(conn: Connection, job: WorkerJob) -> None:
    """Entry point of the spawned worker process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C is the service's to handle
    if job.cpus:  # before the trainer starts: XLA sizes its thread pool by the CPUs allowed
        pin_process(job.cpus)
    if job.nice:
        os.nice(job.nice)
    worker = _Worker(conn, job)
    signal.signal(signal.SIGTERM, lambda *_: worker.terminate.set())
    try:
        worker.main()
    except RunInputError as exc:  # from `create` or `restore`: the run's inputs cannot work
        worker.send(proto.Log("ERROR", f"invalid input: {exc}"))
        worker.send(proto.Fatal(f"invalid input: {exc}", permanent=True))
        raise SystemExit(1) from None
    except BaseException as exc:
        if isinstance(exc, SystemExit) and not exc.code:
            raise
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        worker.send(proto.Log("ERROR", traceback.format_exc()[-4000:]))
        worker.send(proto.Fatal(detail))
        raise SystemExit(1) from None
