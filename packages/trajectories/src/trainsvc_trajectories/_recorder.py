"""TrajectoryRecorder: validates calls at once, writes them in batches in the background."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import math
import os
import queue
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from ._db import DEFAULT_URL, Db
from ._errors import (
    InvalidRecordError,
    RecorderClosedError,
    StepStateError,
    UnknownTrajectoryError,
)
from ._store import Store, process_start_token
from ._windows import Windowing

# Statements a unit may hold; the writer runs each batch's rows in this order, so a
# trajectory's INSERT always precedes its end-of-trajectory UPDATE.
_INSERT_TRAJECTORY, _INSERT_STEP, _INSERT_CALL, _INSERT_ACCESS, _END = range(5)
_SQL: Final = (
    "INSERT INTO trajectories (trajectory_id, recorder_id, agent_id, window_id, scenario_id, "
    "status, metadata, started_at) VALUES (?, ?, ?, ?, ?, 'open', ?, ?)",
    "INSERT INTO steps (trajectory_id, step_index, environment_state, action, reward, "
    "started_at, completed_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
    "INSERT INTO llm_calls (trajectory_id, seq, step_index, model, system_prompt, user_prompt, "
    "messages, response, temperature, max_tokens, purpose, action_type, latency, prompt_tokens, "
    "completion_tokens, total_tokens, created_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    "INSERT INTO provider_accesses (trajectory_id, seq, step_index, provider, data, purpose, "
    "created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
    "UPDATE trajectories SET status = ?, final_metrics = ?, reward = ?, error = ?, ended_at = ?, "
    "n_steps = ? WHERE trajectory_id = ? AND status = 'open'",
)
_Unit = list[tuple[int, tuple[Any, ...]]]
_FULL: Final = object()
_STOP: Final = object()

_current: contextvars.ContextVar[TrajectoryHandle | None] = contextvars.ContextVar(
    "trainsvc_trajectories_current", default=None
)


@dataclass(frozen=True)
class TrajectoryHandle:
    """What ``start_trajectory`` returns; pass it (or its ``id``) to the other calls."""

    id: str
    agent_id: str
    window_id: str
    scenario_id: str | None


def current_trajectory() -> TrajectoryHandle | None:
    """The trajectory of the innermost ``recorder.trajectory(...)`` block in this thread/task."""
    return _current.get()


@dataclass
class _Step:
    index: int
    state_json: str
    started_at: float
    children: _Unit = field(default_factory=list)


@dataclass
class _Open:
    handle: TrajectoryHandle
    seq: int = 0
    n_steps: int = 0
    step: _Step | None = None
    rewards: list[float] = field(default_factory=list)
    held: _Unit = field(default_factory=list)  # commit="trajectory": rows kept until the end


_ENCODER: Final = json.JSONEncoder(allow_nan=False, separators=(",", ":"), ensure_ascii=False)


def _json(name: str, value: Any) -> str:
    try:
        return _ENCODER.encode(value)
    except (TypeError, ValueError) as e:
        raise InvalidRecordError(
            name, f"must be JSON-serialisable without NaN or infinity ({e})"
        ) from None


def _finite(name: str, value: Any, *, optional: bool = True) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRecordError(name, f"must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise InvalidRecordError(name, f"must be finite, got {value!r}")
    return float(value)


def _text(name: str, value: Any, *, optional: bool = True) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise InvalidRecordError(name, f"must be a string, got {type(value).__name__}")
    return value


def _int(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidRecordError(name, f"must be a non-negative integer, got {value!r}")
    return value


def _tokens(value: Any) -> tuple[int | None, int | None, int | None]:
    """``(prompt, completion, total)`` from an int (total), a mapping, or a pair."""
    if value is None:
        return None, None, None
    if isinstance(value, Mapping):
        p = _int("tokens.prompt_tokens", value.get("prompt_tokens"))
        c = _int("tokens.completion_tokens", value.get("completion_tokens"))
        t = _int("tokens.total_tokens", value.get("total_tokens"))
        if t is None and p is not None and c is not None:
            t = p + c
        return p, c, t
    if isinstance(value, tuple | list):
        if len(value) != 2:
            raise InvalidRecordError("tokens", "a pair must be (prompt_tokens, completion_tokens)")
        p, c = _int("tokens[0]", value[0]), _int("tokens[1]", value[1])
        return p, c, (p or 0) + (c or 0)
    return None, None, _int("tokens", value)


class TrajectoryRecorder:
    """Records agent trajectories into a store, safe from many threads at once.

    Every call is checked at once in the caller's thread (unknown ids, steps out of
    order, NaN rewards raise :class:`InvalidRecordError` subclasses that name the field,
    and change nothing); accepted records go through a bounded queue to one writer
    thread that commits them in batches. A full queue blocks the caller (back-pressure),
    records are never dropped; a writer that cannot write makes the next call raise
    :class:`RecorderClosedError`. A trajectory's rows commit in one transaction with its
    end (``commit="trajectory"``, the default), or step by step (``commit="step"``).
    On start, open trajectories of recorders that died are marked ``abandoned``.

    Args:
        url: the store (``sqlite:///path.db``, a path, or ``postgresql://...``).
        windowing: how ``start_trajectory`` picks a window when none is given.
        batch_size: most queued units written per transaction.
        max_pending: the queue's bound, in units (a step with its children is one unit).
        heartbeat_s: how often the writer marks this recorder alive.
        linger_s: how long the writer waits for more units before committing a batch.
        commit: ``"trajectory"`` (default): a trajectory's steps, calls and accesses are
            kept in memory and committed together with its end, in one transaction, so
            a crash leaves only the ``open`` (then ``abandoned``) header, never part of
            a trajectory. ``"step"``: each completed step (with its calls and accesses)
            is committed as it completes, for long trajectories that others watch live
            or that would not fit in memory; a crash then leaves the completed steps
            of an ``abandoned`` trajectory.
        stale_after_s: a recorder silent this long counts as dead (other hosts).
    """

    def __init__(
        self,
        url: str | Path = DEFAULT_URL,
        *,
        windowing: Windowing | None = None,
        batch_size: int = 512,
        max_pending: int = 10_000,
        heartbeat_s: float = 10.0,
        stale_after_s: float = 120.0,
        linger_s: float = 0.005,
        commit: str = "trajectory",
    ) -> None:
        if batch_size < 1:
            raise InvalidRecordError("batch_size", f"must be >= 1, got {batch_size}")
        if max_pending < 1:
            raise InvalidRecordError("max_pending", f"must be >= 1, got {max_pending}")
        self.url = str(url)
        self.windowing = windowing or Windowing()
        self.batch_size = batch_size
        self.heartbeat_s = heartbeat_s
        if not 0.0 <= linger_s <= 1.0:
            raise InvalidRecordError("linger_s", f"must be in [0, 1] seconds, got {linger_s}")
        self.linger_s = linger_s
        if commit not in ("trajectory", "step"):
            raise InvalidRecordError("commit", f"must be 'trajectory' or 'step', got {commit!r}")
        self.commit = commit
        self.recorder_id = uuid.uuid4().hex
        with Store(url) as store:
            self.abandoned_on_start = store.abandon_orphans(stale_after_s=stale_after_s)
        self._db = Db(url)
        now = time.time()
        try:
            self._db.execute(
                "INSERT INTO recorders (recorder_id, host, pid, proc_start, started_at, "
                "heartbeat_at) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    self.recorder_id,
                    socket.gethostname(),
                    os.getpid(),
                    process_start_token(os.getpid()),
                    now,
                    now,
                ),
            )
        except BaseException:
            self._db.close()
            raise
        self._lock = threading.Lock()
        self._open: dict[str, _Open] = {}
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_pending)
        self._done = threading.Condition()
        self._enqueued = 0
        self._committed = 0
        self._error: BaseException | None = None
        self._closed = False
        self.batches_written = 0
        self._thread = threading.Thread(
            target=self._writer, name=f"trajectory-writer-{self.recorder_id[:8]}", daemon=True
        )
        self._thread.start()

    # -- plumbing -------------------------------------------------------------

    def _check_alive(self) -> None:
        if self._error is not None:
            raise RecorderClosedError(
                f"the recorder's writer failed: {self._error!r}; "
                f"{self._enqueued - self._committed} queued records were not written"
            ) from self._error
        if self._closed:
            raise RecorderClosedError("the recorder is closed")

    def _put(self, unit: _Unit, *, wait: bool) -> bool:
        """Queue a unit; with ``wait=False`` returns False (queuing nothing) when full."""
        self._check_alive()
        while True:
            try:
                self._queue.put(unit, block=wait, timeout=0.1 if wait else None)
                break
            except queue.Full:
                if not wait:
                    return False
                self._check_alive()  # a writer that died while we waited: raise, don't hang
        with self._done:
            self._enqueued += 1
        return True

    def _get(self, trajectory: TrajectoryHandle | str) -> _Open:
        tid = trajectory.id if isinstance(trajectory, TrajectoryHandle) else trajectory
        if not isinstance(tid, str):
            raise InvalidRecordError(
                "trajectory", f"must be a TrajectoryHandle or an id string, got {tid!r}"
            )
        state = self._open.get(tid)
        if state is None:
            raise UnknownTrajectoryError(tid)
        return state

    def _wait_for_space(self) -> None:
        q = self._queue
        with q.not_full:  # holds q.mutex: read the deque directly (q.full() would deadlock)
            while len(q.queue) >= q.maxsize and self._error is None:
                self._queue.not_full.wait(0.05)

    def _writer(self) -> None:
        db = self._db
        last_beat = time.monotonic()
        stopping = False
        while not stopping:
            try:
                first = self._queue.get(timeout=self.heartbeat_s)
            except queue.Empty:
                first = None
            batch: list[_Unit] = []
            if first is _STOP:
                stopping = True
            elif first is not None:
                batch.append(first)
            # Linger a moment for more units: one commit per batch, not per unit.
            deadline = time.monotonic() + self.linger_s
            while batch and len(batch) < self.batch_size and not stopping:
                left = deadline - time.monotonic()
                try:
                    item = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                else:
                    batch.append(item)
            beat = time.monotonic() - last_beat >= self.heartbeat_s
            if not batch and not beat:
                continue
            try:
                self._write(db, batch, beat=beat)
            except BaseException as e:  # surfaced on the next call, never swallowed
                self._error = e
                with self._done:
                    self._done.notify_all()
                return
            if beat:
                last_beat = time.monotonic()
            if batch:
                self.batches_written += 1
                with self._done:
                    self._committed += len(batch)
                    self._done.notify_all()

    def _write(self, db: Db, batch: list[_Unit], *, beat: bool) -> None:
        rows: list[list[tuple[Any, ...]]] = [[] for _ in _SQL]
        for unit in batch:
            for kind, params in unit:
                rows[kind].append(params)
        for attempt in range(5):
            try:
                with db.transaction():
                    for kind, params_list in enumerate(rows):
                        db.executemany(_SQL[kind], params_list)
                    if beat:
                        db.execute(
                            "UPDATE recorders SET heartbeat_at = ? WHERE recorder_id = ?",
                            (time.time(), self.recorder_id),
                        )
                return
            except Exception as e:
                if attempt == 4 or not (_transient(e) or db.reconnect_if_broken()):
                    raise
                time.sleep(0.05 * 2**attempt)
                db.reconnect_if_broken()

    # -- the recording API ----------------------------------------------------

    def start_trajectory(
        self,
        agent_id: str,
        window_id: str | None = None,
        scenario_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> TrajectoryHandle:
        """Open a trajectory; its window defaults to the one holding the current time."""
        out = self._start(agent_id, window_id, scenario_id, metadata, wait=True)
        assert isinstance(out, TrajectoryHandle)
        return out

    def _start(
        self,
        agent_id: Any,
        window_id: Any,
        scenario_id: Any,
        metadata: Any,
        *,
        wait: bool,
    ) -> Any:
        agent = _text("agent_id", agent_id, optional=False)
        if not agent:
            raise InvalidRecordError("agent_id", "must be a non-empty string")
        now = time.time()
        window = _text("window_id", window_id) or self.windowing.window_id(now)
        scenario = _text("scenario_id", scenario_id)
        if metadata is not None and not isinstance(metadata, Mapping):
            raise InvalidRecordError("metadata", "must be a mapping of string keys")
        meta = _json("metadata", dict(metadata or {}))
        handle = TrajectoryHandle(uuid.uuid4().hex, agent, window, scenario)
        unit: _Unit = [
            (
                _INSERT_TRAJECTORY,
                (handle.id, self.recorder_id, agent, window, scenario, meta, now),
            )
        ]
        with self._lock:
            if not self._put(unit, wait=wait):
                return _FULL
            self._open[handle.id] = _Open(handle)
        return handle

    def start_step(self, trajectory: TrajectoryHandle | str, environment_state: Any = None) -> int:
        """Open the next step with the state the agent sees; returns its index (0, 1, ...).

        Raises:
            StepStateError: the previous step was not completed.
        """
        state_json = _json("environment_state", environment_state)
        with self._lock:
            self._check_alive()
            t = self._get(trajectory)
            if t.step is not None:
                raise StepStateError(
                    "step",
                    f"step {t.step.index} of trajectory {t.handle.id!r} is still open; "
                    "complete_step it before start_step",
                )
            t.step = _Step(t.n_steps, state_json, time.time())
            return t.step.index

    def _child(self, t: _Open, kind: int, params: tuple[Any, ...], *, wait: bool) -> Any:
        """A call's row: kept with the open step (same transaction), else queued alone."""
        seq = t.seq
        step_index = None if t.step is None else t.step.index
        row = (t.handle.id, seq, step_index, *params)
        if t.step is not None:
            t.step.children.append((kind, row))
        elif self.commit == "trajectory":
            t.held.append((kind, row))
        elif not self._put([(kind, row)], wait=wait):
            return _FULL
        t.seq += 1
        return seq

    def log_provider_access(
        self,
        trajectory: TrajectoryHandle | str,
        provider: str,
        data: Any,
        purpose: str | None = None,
    ) -> int:
        """Record a read of an outside data provider; returns its sequence number."""
        return int(self._access(trajectory, provider, data, purpose, wait=True))

    def _access(
        self, trajectory: Any, provider: Any, data: Any, purpose: Any, *, wait: bool
    ) -> Any:
        name = _text("provider", provider, optional=False)
        params = (name, _json("data", data), _text("purpose", purpose), time.time())
        with self._lock:
            self._check_alive()
            return self._child(self._get(trajectory), _INSERT_ACCESS, params, wait=wait)

    def log_llm_call(
        self,
        trajectory: TrajectoryHandle | str,
        model: str,
        system_prompt: str | None,
        user_prompt: str | None,
        response: str | None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        purpose: str | None = None,
        action_type: str | None = None,
        latency: float | None = None,
        tokens: int | Mapping[str, int] | tuple[int, int] | None = None,
        *,
        messages: list[dict[str, Any]] | None = None,
    ) -> int:
        """Record one LLM call (``messages``: the full chat, when there was more than one turn).

        ``tokens`` is a total, a ``(prompt, completion)`` pair, or a mapping with
        ``prompt_tokens`` / ``completion_tokens`` / ``total_tokens``. Returns its sequence
        number.
        """
        return int(
            self._llm(
                trajectory,
                model,
                system_prompt,
                user_prompt,
                response,
                temperature,
                max_tokens,
                purpose,
                action_type,
                latency,
                tokens,
                messages,
                wait=True,
            )
        )

    def _llm(
        self,
        trajectory: Any,
        model: Any,
        system_prompt: Any,
        user_prompt: Any,
        response: Any,
        temperature: Any,
        max_tokens: Any,
        purpose: Any,
        action_type: Any,
        latency: Any,
        tokens: Any,
        messages: Any,
        *,
        wait: bool,
    ) -> Any:
        if messages is not None and (
            not isinstance(messages, list)
            or not all(isinstance(m, Mapping) and "role" in m for m in messages)
        ):
            raise InvalidRecordError("messages", "must be a list of chat messages with a 'role'")
        lat = _finite("latency", latency)
        if lat is not None and lat < 0:
            raise InvalidRecordError("latency", f"must be >= 0 seconds, got {lat}")
        params = (
            _text("model", model, optional=False),
            _text("system_prompt", system_prompt),
            _text("user_prompt", user_prompt),
            None if messages is None else _json("messages", messages),
            _text("response", response),
            _finite("temperature", temperature),
            _int("max_tokens", max_tokens),
            _text("purpose", purpose),
            _text("action_type", action_type),
            lat,
            *_tokens(tokens),
            time.time(),
        )
        with self._lock:
            self._check_alive()
            return self._child(self._get(trajectory), _INSERT_CALL, params, wait=wait)

    def complete_step(
        self, trajectory: TrajectoryHandle | str, action: Any = None, reward: float | None = None
    ) -> int:
        """Close the open step with the agent's action and its reward; returns the step index.

        Raises:
            StepStateError: no step is open (e.g. this step was already completed).
            InvalidRecordError: ``reward`` is NaN or infinite, ``action`` not JSON.
        """
        return int(self._complete(trajectory, action, reward, wait=True))

    def _complete(self, trajectory: Any, action: Any, reward: Any, *, wait: bool) -> Any:
        r = _finite("reward", reward)
        action_json = _json("action", action)
        with self._lock:
            self._check_alive()
            t = self._get(trajectory)
            if t.step is None:
                last = t.n_steps - 1
                raise StepStateError(
                    "step",
                    (
                        f"step {last} of trajectory {t.handle.id!r} is already completed"
                        if last >= 0
                        else f"trajectory {t.handle.id!r} has no open step; call start_step first"
                    ),
                )
            s = t.step
            unit: _Unit = [
                (
                    _INSERT_STEP,
                    (t.handle.id, s.index, s.state_json, action_json, r, s.started_at, time.time()),
                ),
                *s.children,
            ]
            if self.commit == "trajectory":
                t.held.extend(unit)
            elif not self._put(unit, wait=wait):
                return _FULL
            t.step = None
            t.n_steps += 1
            if r is not None:
                t.rewards.append(r)
            return s.index

    def end_trajectory(
        self,
        trajectory: TrajectoryHandle | str,
        final_metrics: Mapping[str, Any] | None = None,
        *,
        reward: float | None = None,
        status: str = "completed",
        error: str | None = None,
    ) -> None:
        """Close a trajectory.

        Its reward is ``reward`` if given, else the sum of its steps' rewards (``None``
        when no step had one). ``status`` is ``completed`` or ``failed``; a step still
        open is kept, marked not completed (no action, no reward).
        """
        self._end(trajectory, final_metrics, reward, status, error, wait=True)

    def _end(
        self,
        trajectory: Any,
        final_metrics: Any,
        reward: Any,
        status: Any,
        error: Any,
        *,
        wait: bool,
    ) -> Any:
        if status not in ("completed", "failed"):
            raise InvalidRecordError("status", f"must be 'completed' or 'failed', got {status!r}")
        if final_metrics is not None and not isinstance(final_metrics, Mapping):
            raise InvalidRecordError("final_metrics", "must be a mapping")
        metrics = _json("final_metrics", dict(final_metrics or {}))
        r = _finite("reward", reward)
        with self._lock:
            self._check_alive()
            t = self._get(trajectory)
            unit: _Unit = list(t.held)
            n_steps = t.n_steps
            if t.step is not None:
                s = t.step
                unit.append(
                    (
                        _INSERT_STEP,
                        (t.handle.id, s.index, s.state_json, None, None, s.started_at, None),
                    )
                )
                unit.extend(s.children)
                n_steps += 1
            total = r if r is not None else (math.fsum(t.rewards) if t.rewards else None)
            unit.append(
                (
                    _END,
                    (
                        status,
                        metrics,
                        total,
                        _text("error", error),
                        time.time(),
                        n_steps,
                        t.handle.id,
                    ),
                )
            )
            if not self._put(unit, wait=wait):
                return _FULL
            del self._open[t.handle.id]
            return None

    @contextlib.contextmanager
    def trajectory(
        self,
        agent_id: str,
        window_id: str | None = None,
        scenario_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Iterator[TrajectoryHandle]:
        """A trajectory for a ``with`` block: ended on exit, ``failed`` (with the error) if it raises.

        Inside the block, :func:`current_trajectory` (and ``wrap_openai`` clients) see it.
        """
        handle = self.start_trajectory(agent_id, window_id, scenario_id, metadata)
        token = _current.set(handle)
        try:
            yield handle
        except BaseException as e:
            if handle.id in self._open:
                self.end_trajectory(handle, status="failed", error=f"{type(e).__name__}: {e}")
            raise
        else:
            if handle.id in self._open:
                self.end_trajectory(handle)
        finally:
            _current.reset(token)

    # -- lifecycle ------------------------------------------------------------

    @property
    def open_trajectories(self) -> list[str]:
        with self._lock:
            return list(self._open)

    @property
    def pending(self) -> int:
        """Units queued but not yet committed."""
        with self._done:
            return self._enqueued - self._committed

    def flush(self, timeout: float | None = None) -> None:
        """Block until everything queued so far is committed.

        Raises:
            RecorderClosedError: the writer failed (nothing queued after that is written).
            TimeoutError: ``timeout`` seconds passed first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._done:
            target = self._enqueued
            while self._committed < target and self._error is None:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"{target - self._committed} records still queued")
                self._done.wait(0.1 if left is None else min(left, 0.1))
        if self._error is not None:
            self._check_alive()

    def close(self) -> None:
        """Write everything queued, mark this recorder closed, stop the writer.

        Trajectories still open stay ``open`` in the store and are not marked
        abandoned (this recorder ended cleanly but did not end them: they are reported
        by ``open_trajectories`` and by the quality report).
        """
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._closed = True
            if self._thread.is_alive():
                self._queue.put(_STOP)
                self._thread.join()
            if self._error is None and not self._open:
                self._db.execute(
                    "UPDATE recorders SET closed_at = ? WHERE recorder_id = ?",
                    (time.time(), self.recorder_id),
                )
            self._db.close()

    def __enter__(self) -> TrajectoryRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def aio(self) -> AsyncTrajectoryRecorder:
        """The same recorder for asyncio code: awaitable calls that never block the loop."""
        return AsyncTrajectoryRecorder(self)


def _transient(e: BaseException) -> bool:
    text = str(e).lower()
    return any(
        s in text
        for s in ("database is locked", "busy", "deadlock", "could not serialize", "connection")
    )


class AsyncTrajectoryRecorder:
    """Awaitable twins of the recorder's calls, for agents written with asyncio.

    Validation runs in the task; when the queue is full the task awaits space in a
    worker thread, so the event loop keeps running other tasks.
    """

    def __init__(self, recorder: TrajectoryRecorder) -> None:
        self.recorder = recorder

    async def _retry(self, fn: Any, *args: Any) -> Any:
        while True:
            out = fn(*args, wait=False)
            if out is not _FULL:
                return out
            await asyncio.to_thread(self.recorder._wait_for_space)

    async def start_trajectory(
        self,
        agent_id: str,
        window_id: str | None = None,
        scenario_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> TrajectoryHandle:
        out = await self._retry(self.recorder._start, agent_id, window_id, scenario_id, metadata)
        assert isinstance(out, TrajectoryHandle)
        return out

    async def start_step(
        self, trajectory: TrajectoryHandle | str, environment_state: Any = None
    ) -> int:
        return self.recorder.start_step(trajectory, environment_state)

    async def log_provider_access(
        self,
        trajectory: TrajectoryHandle | str,
        provider: str,
        data: Any,
        purpose: str | None = None,
    ) -> int:
        return int(await self._retry(self.recorder._access, trajectory, provider, data, purpose))

    async def log_llm_call(
        self,
        trajectory: TrajectoryHandle | str,
        model: str,
        system_prompt: str | None,
        user_prompt: str | None,
        response: str | None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        purpose: str | None = None,
        action_type: str | None = None,
        latency: float | None = None,
        tokens: int | Mapping[str, int] | tuple[int, int] | None = None,
        *,
        messages: list[dict[str, Any]] | None = None,
    ) -> int:
        return int(
            await self._retry(
                self.recorder._llm,
                trajectory,
                model,
                system_prompt,
                user_prompt,
                response,
                temperature,
                max_tokens,
                purpose,
                action_type,
                latency,
                tokens,
                messages,
            )
        )

    async def complete_step(
        self, trajectory: TrajectoryHandle | str, action: Any = None, reward: float | None = None
    ) -> int:
        return int(await self._retry(self.recorder._complete, trajectory, action, reward))

    async def end_trajectory(
        self,
        trajectory: TrajectoryHandle | str,
        final_metrics: Mapping[str, Any] | None = None,
        *,
        reward: float | None = None,
        status: str = "completed",
        error: str | None = None,
    ) -> None:
        await self._retry(self.recorder._end, trajectory, final_metrics, reward, status, error)

    async def flush(self) -> None:
        await asyncio.to_thread(self.recorder.flush)

    @contextlib.asynccontextmanager
    async def trajectory(
        self,
        agent_id: str,
        window_id: str | None = None,
        scenario_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> AsyncIterator[TrajectoryHandle]:
        """``async with``: ended on exit, ``failed`` with the error if the block raises."""
        handle = await self.start_trajectory(agent_id, window_id, scenario_id, metadata)
        token = _current.set(handle)
        try:
            yield handle
        except BaseException as e:
            if handle.id in self.recorder._open:
                await self.end_trajectory(handle, status="failed", error=f"{type(e).__name__}: {e}")
            raise
        else:
            if handle.id in self.recorder._open:
                await self.end_trajectory(handle)
        finally:
            _current.reset(token)
