"""Submit, monitor and chain Kaggle sessions, with a resumable ``state.json``.

``state.json`` (in the state directory) is the single source of truth, so an
interrupted monitor picks up where it was and an automation agent can read
what comes next from ``next_action``:

- ``wait``: a session is queued or running; run ``monitor`` (again);
- ``evaluate_results``: the run reached its step budget; the output is downloaded;
- ``chain_next_session``: the session ended before the step budget; ``monitor --chain``
  (or ``submit --next``) starts the next session from its checkpoint;
- ``fix_and_resubmit``: the session failed; ``error`` says why and what to do;
- ``wait_for_quota``: not enough weekly GPU quota is left to start a session.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from trainsvc_launchers._config import LaunchConfig
from trainsvc_launchers._crashloop import CrashLoopError, ResumeMetadata, record_resume
from trainsvc_launchers._files import read_json, write_json_atomic
from trainsvc_launchers._kaggle_api import KaggleError, PushResult, Quota
from trainsvc_launchers._kaggle_errors import classify_log
from trainsvc_launchers._kaggle_kernel import KaggleSpec, build_kernel_folder, kernel_id
from trainsvc_launchers._output import ExitCode, Reporter

__all__ = ["KaggleFlow", "KaggleLike", "KaggleState"]

STATE_FILE = "state.json"
MIN_QUOTA_HOURS = 1.0
SECTION = "KAGGLE"
_WAITING = {"QUEUED", "NEW_SCRIPT"}
_RUNNING = {"RUNNING"}
_FAILED = {"ERROR", "CANCEL_REQUESTED", "CANCEL_ACKNOWLEDGED"}


class KaggleLike(Protocol):
    """The Kaggle calls the flow needs (:class:`~trainsvc_launchers._kaggle_api.KaggleService`)."""

    def push(self, folder: Path) -> PushResult: ...
    def status(self, kernel: str) -> tuple[str, str | None]: ...
    def download_output(self, kernel: str, dest: Path) -> tuple[list[Path], str]: ...
    def quota(self) -> Quota | None: ...


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


@dataclass
class KaggleState:
    """What ``state.json`` holds (no credentials, ever)."""

    run_id: str
    kernel_id: str
    session: int = 1
    attempt: int = 1
    status: str = "waiting_training"
    kaggle_status: str | None = None
    next_action: str = "wait"
    submitted_at: str | None = None
    updated_at: str | None = None
    finished_at: str | None = None
    kernel_url: str | None = None
    version: int | None = None
    steps_done: int = 0
    step_budget: int = 0
    output_dir: str | None = None
    error: dict[str, str] | None = None
    polls: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def load(cls, state_dir: Path) -> KaggleState | None:
        """Read ``state.json``; ``None`` when there is none yet."""
        path = state_dir / STATE_FILE
        if not path.exists():
            return None
        raw = read_json(path)
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in raw.items() if k in known})

    def save(self, state_dir: Path) -> None:
        """Write ``state.json`` atomically."""
        self.updated_at = _now()
        write_json_atomic(state_dir / STATE_FILE, asdict(self))


LOCK_FILE = "monitor.lock"


@contextlib.contextmanager
def chain_lock(state_dir: Path) -> Iterator[str | None]:
    """Hold the chain's monitor lock (``monitor.lock``, an OS file lock released when the
    process ends, even killed); yields ``None`` when held, else who holds it."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / LOCK_FILE
    with path.open("a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            yield handle.read().strip() or "another process"
            return
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} since {_now()}")
        handle.flush()
        try:
            yield None
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _wants_next(state: KaggleState) -> bool:
    """A session finished short of the step budget: the chain's next session is due
    (``chain_next_session``, or a try at it refused for quota or a rejected push)."""
    return state.status == "completed" and state.steps_done < state.step_budget


class KaggleFlow:
    """Submit / monitor / chain one run's Kaggle sessions.

    Args:
        cfg: the launch config (its ``kaggle`` section is ``spec``).
        spec: the validated ``[kaggle]`` section.
        kaggle: the Kaggle client.
        state_dir: where ``state.json``, kernel folders and outputs live.
        reporter: where progress lines go.
    """

    def __init__(
        self,
        cfg: LaunchConfig,
        spec: KaggleSpec,
        kaggle: KaggleLike,
        state_dir: Path,
        reporter: Reporter,
    ) -> None:
        self.cfg = cfg
        self.spec = spec
        self.kaggle = kaggle
        self.state_dir = state_dir
        self.out = reporter

    def load(self) -> KaggleState | None:
        """The current state, if any session was submitted."""
        return KaggleState.load(self.state_dir)

    # -- submit -----------------------------------------------------------------

    def _quota_ok(self, state: KaggleState | None) -> bool:
        quota = self.kaggle.quota()
        if quota is None:
            self.out.warning(SECTION, "Kaggle did not report the GPU quota; submitting anyway")
            return True
        msg = (
            f"GPU quota: {quota.remaining_hours:.1f} h left of {quota.total_hours:.1f} h this week"
        )
        if quota.remaining_hours < MIN_QUOTA_HOURS:
            self.out.error(
                SECTION,
                f"{msg}; need at least {MIN_QUOTA_HOURS:.0f} h (refresh: {quota.refresh_time})",
            )
            if state is not None:
                how = (
                    "`trainsvc-launch kaggle monitor --chain` (or `submit --next`)"
                    if _wants_next(state)
                    else "`trainsvc-launch kaggle submit --resubmit`"
                )
                state.next_action = "wait_for_quota"
                state.error = {
                    "kind": "quota",
                    "message": msg,
                    "next_step": f"when the quota is back (refresh: {quota.refresh_time}): {how}",
                }
                state.save(self.state_dir)
                self.out.info(
                    SECTION, f"when the quota is back: {how}", next_action="wait_for_quota"
                )
            return False
        self.out.success(SECTION, msg)
        return True

    def submit(self, session: int | None = None, resubmit: bool = False) -> ExitCode:
        """Submit a session: the first, a resubmission of the current one, or ``session``.

        Nothing is pushed while a session is still queued or running.
        """
        state = self.load()
        if (
            state is not None
            and state.status in ("waiting_training", "in_progress")
            and not resubmit
        ):
            self.out.error(
                SECTION,
                f"{state.kernel_id} is already {state.status}; run `trainsvc-launch kaggle monitor`",
            )
            return ExitCode.ERROR
        if session is None:
            # a finished session short of the step budget is continued, never pushed again
            # (it would start from step 0 without the previous output)
            if state is not None and _wants_next(state):
                return self.chain(state)
            session = state.session if state is not None else 1
        attempt = 1
        if state is not None and state.session == session:
            attempt = state.attempt + 1
        if not self._quota_ok(state):
            return ExitCode.ERROR
        folder = build_kernel_folder(
            self.cfg, self.spec, session, self.state_dir / "kernels" / f"s{session}"
        )
        kid = kernel_id(self.spec, session)
        try:
            pushed = self.kaggle.push(folder)
        except KaggleError as exc:
            self.out.error(SECTION, str(exc), kernel_id=kid)
            if state is None:  # the first push: keep a record of what was tried
                state = KaggleState(
                    run_id=self.cfg.run_id,
                    kernel_id=kid,
                    session=session,
                    attempt=0,
                    status="not_submitted",
                    step_budget=self.cfg.step_budget,
                )
            state.next_action = "fix_and_resubmit"
            retry = (
                "trainsvc-launch kaggle submit --resubmit"
                if not _wants_next(state)
                else f"trainsvc-launch kaggle submit --next (pushes session {session})"
            )
            state.error = {
                "kind": "push_rejected",
                "message": str(exc),
                "next_step": f"fix the kernel spec, then: {retry}",
            }
            state.save(self.state_dir)
            return ExitCode.ERROR
        history = state.history if state is not None else []
        # the kernel Kaggle says it saved (its ref, "/code/owner/slug") is the one to poll
        ref = pushed.ref.strip("/").removeprefix("code/")
        if ref.count("/") == 1 and ref != kid:
            self.out.warning(SECTION, f"Kaggle saved the kernel as {ref} (asked for {kid})")
            kid = ref
        new = KaggleState(
            run_id=self.cfg.run_id,
            kernel_id=kid,
            session=session,
            attempt=attempt,
            submitted_at=_now(),
            kernel_url=pushed.url,
            version=pushed.version,
            step_budget=self.cfg.step_budget,
            steps_done=state.steps_done if state is not None else 0,
            history=history,
        )
        new.save(self.state_dir)
        self.out.success(
            SECTION,
            f"submitted {kid} (session {session}, attempt {attempt}): {pushed.url}",
            kernel_id=kid,
        )
        return ExitCode.OK

    # -- monitor ----------------------------------------------------------------

    def poll(self, state: KaggleState) -> None:
        """Poll Kaggle once and update ``state`` (downloading the output when the session ended)."""
        status, failure = self.kaggle.status(state.kernel_id)
        state.kaggle_status = status
        state.polls += 1
        if status in _WAITING:
            state.status, state.next_action = "waiting_training", "wait"
        elif status in _RUNNING:
            state.status, state.next_action = "in_progress", "wait"
        elif status == "COMPLETE":
            self._finish(state, failure)
        elif status in _FAILED:
            if status.startswith("CANCEL") and not failure:
                failure = f"the session was cancelled on Kaggle ({status})"
            self._fail(state, failure)
        else:
            self.out.warning(SECTION, f"unknown Kaggle status {status!r}; still waiting")
        state.save(self.state_dir)

    def _download(self, state: KaggleState) -> tuple[dict[str, Any] | None, str]:
        dest = self.state_dir / "output" / f"s{state.session}"
        _, log = self.kaggle.download_output(state.kernel_id, dest)
        state.output_dir = str(dest)
        self.out.success(SECTION, f"output of {state.kernel_id} downloaded to {dest}")
        summary_path = dest / "status.json"
        summary = read_json(summary_path) if summary_path.exists() else None
        return summary, log

    def _finish(self, state: KaggleState, failure: str | None) -> None:
        summary, log = self._download(state)
        state.finished_at = _now()
        if summary is None or summary.get("state") == "error":
            message = (
                (summary or {}).get("message") or failure or "the session wrote no status.json"
            )
            self._record_error(state, log, str(message))
            return
        state.steps_done = int(summary.get("step", 0))
        state.status = "completed"
        state.error = None
        state.history.append(
            {
                "session": state.session,
                "kernel_id": state.kernel_id,
                "status": "completed",
                "step": state.steps_done,
            }
        )
        if state.steps_done >= state.step_budget:
            state.next_action = "evaluate_results"
            self.out.success(
                SECTION, f"run {state.run_id} finished: step {state.steps_done}/{state.step_budget}"
            )
        else:
            state.next_action = "chain_next_session"
            self.out.info(
                SECTION,
                f"session {state.session} ended at step {state.steps_done}/{state.step_budget}; chain the next session",
            )

    def _fail(self, state: KaggleState, failure: str | None) -> None:
        log = ""
        try:
            _, log = self._download(state)
        except KaggleError as exc:
            self.out.warning(SECTION, f"could not download the failed session's log: {exc}")
        state.finished_at = _now()
        self._record_error(state, log, failure)

    def _record_error(self, state: KaggleState, log: str, failure: str | None) -> None:
        cls = classify_log(log, failure)
        state.status = "error"
        state.next_action = "fix_and_resubmit"
        state.error = {
            "kind": cls.kind,
            "message": failure or cls.evidence,
            "evidence": cls.evidence,
            "next_step": cls.next_step,
        }
        state.history.append(
            {
                "session": state.session,
                "kernel_id": state.kernel_id,
                "status": "error",
                "kind": cls.kind,
            }
        )
        reason = cls.evidence or failure or "Kaggle gave no reason and the log is empty"
        self.out.error(SECTION, f"{state.kernel_id} failed ({cls.kind}): {reason}", kind=cls.kind)
        self.out.info(SECTION, f"next step: {cls.next_step}", next_action=state.next_action)

    def chain(self, state: KaggleState) -> ExitCode:
        """Submit the next session from the finished one's output (crash-loop checked).

        A retry of the same chain step (after a quota refusal or a rejected push)
        is not another resume: only the first try of each finished session counts.
        """
        previous = ResumeMetadata.load(self.state_dir)
        retry = previous is not None and previous.last_checkpoint == state.kernel_id
        if not retry:
            try:
                record_resume(self.state_dir, state.kernel_id, state.steps_done)
            except CrashLoopError as exc:
                self.out.error(SECTION, str(exc))
                state.next_action = "fix_and_resubmit"
                state.error = {
                    "kind": "crash_loop",
                    "message": str(exc),
                    "evidence": f"sessions keep ending at step {state.steps_done}",
                    "next_step": "read the sessions' logs in the output folder, fix the cause, "
                    "then: trainsvc-launch kaggle submit --next",
                }
                state.save(self.state_dir)
                return ExitCode.CRASH_LOOP
        return self.submit(session=state.session + 1)

    def monitor(
        self, interval_s: float, max_hours: float, chain: bool = False, max_polls: int | None = None
    ) -> ExitCode:
        """Poll until the run completes or fails, ``max_hours`` pass or ``max_polls`` polls are made.

        One monitor per chain: a second one (say, ``--background`` started twice)
        exits with an error instead of pushing the next session a second time.
        """
        with chain_lock(self.state_dir) as holder:
            if holder is not None:
                self.out.error(
                    SECTION,
                    f"another monitor is already running for this chain ({holder}); "
                    "it keeps state.json up to date",
                )
                return ExitCode.ERROR
            return self._monitor(interval_s, max_hours, chain, max_polls)

    def _monitor(
        self, interval_s: float, max_hours: float, chain: bool, max_polls: int | None
    ) -> ExitCode:
        state = self.load()
        if state is None:
            self.out.error(
                SECTION, "nothing submitted yet: run `trainsvc-launch kaggle submit` first"
            )
            return ExitCode.ERROR
        self.out.info(SECTION, f"monitoring {state.kernel_id} ({state.status}, poll {state.polls})")
        deadline = time.monotonic() + max_hours * 3600
        polls = 0
        while True:
            crash_loop = (state.error or {}).get("kind") == "crash_loop"
            if crash_loop:
                self._report_final(state)
                return ExitCode.CRASH_LOOP
            if chain and _wants_next(state):
                code = self.chain(state)
                if code is not ExitCode.OK:
                    return code
                state = self.load() or state
            elif state.status == "completed":
                self._report_final(state)
                return ExitCode.OK
            elif state.status == "error":
                self._report_final(state)
                return ExitCode.ERROR
            if (max_polls is not None and polls >= max_polls) or time.monotonic() > deadline:
                self.out.warning(
                    SECTION,
                    f"stopped monitoring {state.kernel_id} while {state.status}; run monitor again to resume",
                )
                return ExitCode.OK
            if polls:
                time.sleep(interval_s)
            try:
                self.poll(state)
            except KaggleError as exc:
                self.out.warning(SECTION, f"poll failed, retrying: {exc}")
            polls += 1
            self.out.info(
                SECTION,
                f"{state.kernel_id}: {state.kaggle_status} → {state.status}",
                status=state.status,
            )

    def _report_final(self, state: KaggleState) -> None:
        self.out.info(
            SECTION,
            f"{state.kernel_id}: {state.status}, step {state.steps_done}/{state.step_budget}, next action: {state.next_action}",
            state=asdict(state),
        )
