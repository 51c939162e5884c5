"""The fan-out core: one upstream stream per watched run, newest-wins per client.

Each run that some client watches has one `RunFeed`: a single `StreamFrames`
call to the service whose frames are encoded once and kept as the feed's
latest frame (older ones are dropped). Each client has one writer task that
sends its queued JSON messages first, then the feed's latest frame when it is
newer than the last one sent and the client's rate allows. A slow client only
blocks its own writer (at the socket's write buffer); the service, the feed
and the other clients never wait for it, and it holds at most one frame
reference and `OUTBOX_LIMIT` text messages.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections import deque
from collections.abc import Coroutine
from typing import Any, Protocol

import grpc
from trainsvc_api.history import MetricHistory
from trainsvc_api.v1 import trainsvc_pb2 as pb
from trainsvc_client import TrainsvcError, run_name
from trainsvc_client.aio import AsyncClient, is_unavailable

from trainsvc_dashboard._admin import ADMIN_CONTROLS, AdminFeed
from trainsvc_dashboard._convert import checkpoint_json, event_json, most_active, run_json
from trainsvc_dashboard._frames import encode_frame
from trainsvc_dashboard._presets import PRESETS

log = logging.getLogger("trainsvc_dashboard")

PROTOCOL_VERSION = 1
DEFAULT_RATE_HZ = 30.0
MAX_RATE_HZ = 60.0
UPSTREAM_RATE_HZ = 60.0
OUTBOX_LIMIT = 256
"""Text messages queued per client; past it the oldest are dropped (and counted)."""
HISTORY_POINTS = 2000
"""Metric points kept per watched run for pages that join late; past it the history is
thinned by halves, so it still spans the whole run since the bridge began watching it."""
EVENTS_KEPT = 200
"""Events kept per run for pages that join late."""
SAMPLES_KEPT = 20
"""A language-model run's latest sample completions kept for pages that join late."""
FEED_LINGER_S = 30.0
"""How long a feed nobody watches keeps streaming (cheap re-selection)."""
CONTROL_TIMEOUT_S = 60.0

MESSAGE_RATE_HZ = 20.0
"""Messages a client may send per second, on average (a token bucket)..."""
MESSAGE_BURST = 40
"""...and at once. Beyond that, messages are dropped with one error reply a second."""
MAX_MESSAGE_DEPTH = 16
"""Nesting of arrays and objects in a client's message."""
MAX_REQ_CHARS = 100
MAX_RUN_CHARS = 200

CONTROLS = ("create", "pause", "resume", "stop", "checkpoint", *ADMIN_CONTROLS)
MESSAGE_TYPES = ("select", "rate", "admin", *CONTROLS)


class Sink(Protocol):
    """What the hub needs of a WebSocket connection."""

    async def send(self, message: str | bytes) -> None: ...


def _dumps(msg: dict[str, Any]) -> str:
    return json.dumps(msg, separators=(",", ":"), allow_nan=False, default=str)


def _raise_if_cancelled() -> None:
    """Re-raise a cancellation that gRPC reported as a CANCELLED status instead."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def _wait_event(event: asyncio.Event, timeout: float | None) -> None:
    """Wait for `event` at most `timeout` seconds (None: no limit).

    `asyncio.timeout` rather than `wait_for`: on Python 3.11 a cancellation
    that lands as `wait_for` times out comes back as a TimeoutError, and a
    writer that swallowed it would never stop.
    """
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        _raise_if_cancelled()


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(parse_constant=_no_constant)


def _nesting_exceeds(text: str, limit: int) -> bool:
    """Whether arrays/objects in a JSON text nest deeper than ``limit`` (a scan, no parse)."""
    depth = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return True
        elif ch in "]}":
            depth -= 1
    return False


def _valid_req(req: Any) -> bool:
    """A control message's ``req`` (echoed in the reply): null, a short string or an integer."""
    if req is None:
        return True
    if isinstance(req, str):
        return len(req) <= MAX_REQ_CHARS
    return isinstance(req, int) and not isinstance(req, bool) and abs(req) < 2**53


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def error_json(err: BaseException) -> dict[str, str]:
    """A failed call as the page's `reply` error: the gRPC code name and the message."""
    if isinstance(err, TrainsvcError):
        return {"code": err.code.name, "message": err.details}
    return {"code": "INTERNAL", "message": str(err) or type(err).__name__}


class BrowserSession:
    """One browser's WebSocket connection: its selection, rate, text outbox and frame cursor."""

    def __init__(self, sink: Sink, rate_hz: float = DEFAULT_RATE_HZ) -> None:
        self.sink = sink
        self.rate_hz = rate_hz
        self.auto = True
        self.feed: RunFeed | None = None
        self.sent_version = -1
        self.next_frame_at = 0.0
        self.outbox: deque[str] = deque()
        self.dropped = 0
        self.dropped_total = 0
        self.frames_sent = 0
        self.wake = asyncio.Event()
        self.tokens = float(MESSAGE_BURST)
        self.tokens_at = 0.0
        self.limited_notice_at = -1.0
        self.messages_dropped = 0

    def allow_message(self, now: float) -> bool:
        """Take one token of the client's message budget; False when it is spent."""
        if self.tokens_at:
            self.tokens = min(
                float(MESSAGE_BURST), self.tokens + (now - self.tokens_at) * MESSAGE_RATE_HZ
            )
        self.tokens_at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        self.messages_dropped += 1
        if now - self.limited_notice_at >= 1.0:
            self.limited_notice_at = now
            self.push(
                {
                    "type": "error",
                    "message": f"rate: more than {MESSAGE_RATE_HZ:g} messages a second "
                    f"(burst {MESSAGE_BURST}); messages dropped",
                }
            )
        return False

    def push(self, msg: dict[str, Any]) -> None:
        """Queue a JSON text message (dropping the oldest past `OUTBOX_LIMIT`)."""
        if len(self.outbox) >= OUTBOX_LIMIT:
            self.outbox.popleft()
            self.dropped += 1
            self.dropped_total += 1
        self.outbox.append(_dumps(msg))
        self.wake.set()

    async def write_loop(self) -> None:
        """Send queued text, then the newest frame at the client's rate, until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            if self.dropped:
                count, self.dropped = self.dropped, 0
                await self.sink.send(_dumps({"type": "dropped", "count": count}))
                continue
            if self.outbox:
                await self.sink.send(self.outbox.popleft())
                continue
            timeout: float | None = None
            feed = self.feed
            if feed is not None and feed.data is not None and feed.version != self.sent_version:
                now = loop.time()
                if now >= self.next_frame_at:
                    version, data = feed.version, feed.data
                    await self.sink.send(data)
                    self.sent_version = version
                    self.frames_sent += 1
                    interval = 1.0 / self.rate_hz
                    # Keep the cadence, but never bank credit for a burst.
                    self.next_frame_at = max(self.next_frame_at + interval, now)
                    continue
                timeout = self.next_frame_at - now
            self.wake.clear()
            await _wait_event(self.wake, timeout)


class RunFeed:
    """One run's upstream frame stream, shared by every client watching it."""

    def __init__(self, hub: BridgeHub, run: str, feed_id: int) -> None:
        self.hub = hub
        self.run = run
        self.id = feed_id
        self.data: bytes | None = None
        self.version = 0
        self.frames_received = 0
        self.clients: set[BrowserSession] = set()
        self.history = MetricHistory(HISTORY_POINTS)
        self.samples: deque[dict[str, Any]] = deque(maxlen=SAMPLES_KEPT)
        self.idle_since: float | None = None
        self.task = asyncio.create_task(self._pump(), name=f"feed {run}")

    def publish(self, frame: pb.Frame) -> None:
        """Make `frame` the latest one and wake the watching clients."""
        self.data = encode_frame(frame, self.id)
        self.version += 1
        self.frames_received += 1
        if frame.metrics:
            self.history.add(int(frame.step), dict(frame.metrics))
        if frame.WhichOneof("payload") == "lm" and frame.lm.sample_step:
            self._add_sample(frame.lm)
        for client in self.clients:
            client.wake.set()

    def _add_sample(self, lm: pb.LMPayload) -> None:
        """Keep a new sample (every frame repeats the latest one until the next)."""
        if self.samples and self.samples[-1]["step"] == lm.sample_step:
            return
        if self.samples and lm.sample_step < self.samples[-1]["step"]:
            self.samples.clear()  # resumed from an earlier checkpoint
        self.samples.append(
            {
                "step": lm.sample_step,
                "prompt": lm.sample_prompt,
                "completion": lm.sample_completion,
            }
        )

    def samples_json(self) -> dict[str, Any]:
        """The kept sample completions as a `samples` message, oldest first."""
        return {"type": "samples", "run": self.run, "feed": self.id, "samples": list(self.samples)}

    def history_json(self) -> dict[str, Any]:
        """The metric history as a `history` message."""
        points = self.history.points()
        steps = [s for s, _ in points]
        names = sorted({k for _, m in points for k in m})
        metrics = {n: [m.get(n) for _, m in points] for n in names}
        return {
            "type": "history",
            "run": self.run,
            "feed": self.id,
            "steps": steps,
            "metrics": metrics,
        }

    async def _seed_history(self) -> None:
        """Start the history from the service's record of the run (its frames from
        before this feed, or before the bridge started), then show it to the watchers."""
        try:
            points = await self.hub.service.get_run_metrics(self.run)
        except TrainsvcError as err:  # an older service, or a run gone: live frames only
            log.info("no metric history for %s: %s", self.run, err)
            return
        for step, metrics in points:
            self.history.add(step, metrics)
        if points:
            for client in self.clients:
                client.push(self.history_json())

    async def _pump(self) -> None:
        service = self.hub.service
        backoff = 0.2
        await self._seed_history()
        while True:
            try:
                async for frame in service.stream_frames(self.run, max_rate_hz=UPSTREAM_RATE_HZ):
                    self.publish(frame)
                    backoff = 0.2
                # The stream ended (the run paused or finished): look again soon,
                # so that a resumed run is picked up.
                await asyncio.sleep(1.0)
            except TrainsvcError as err:
                if err.code == grpc.StatusCode.NOT_FOUND:
                    return  # no such run (deleted meanwhile): nothing to stream, ever
                if is_unavailable(err):
                    self.hub.service_down(err)
                await asyncio.sleep(backoff)
                backoff = min(2.0, backoff * 2)

    def close(self) -> None:
        """Stop the upstream stream."""
        self.task.cancel()


class BridgeHub:
    """Runs, feeds, events and browser sessions of one bridge.

    Args:
        service: the asyncio client of trainsvc (the bridge's token and TLS inside).
        address: the service's address, for the pages and the log.
    """

    def __init__(self, service: AsyncClient, address: str, *, poll_interval_s: float = 1.0) -> None:
        self.service = service
        self.address = address
        self.poll_interval_s = poll_interval_s
        self.clients: set[BrowserSession] = set()
        self.feeds: dict[str, RunFeed] = {}
        self.runs: list[pb.Run] = []
        self.active: str | None = None
        self.events: dict[str, deque[dict[str, Any]]] = {}
        self.last_event_sequence = -1
        self.status: dict[str, str] = {
            "state": "disconnected",
            "address": address,
            "message": "not connected yet",
        }
        self._runs_msg = ""
        self._next_feed_id = 1
        self._refresh = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()
        self.admin = AdminFeed(service, self.service_down)
        """The admin view's data, polled while a page shows it."""

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Poll the service once (so the first page sees its state), then start the loops."""
        await self._poll_once()
        for coro in (self._poll_loop(), self._events_loop(), self._reap_loop()):
            self._tasks.append(asyncio.create_task(coro))

    async def close(self) -> None:
        """Cancel every loop and feed."""
        tasks = [*self._tasks, *self._background, *(f.task for f in self.feeds.values())]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)
        self.feeds.clear()
        await self.admin.close()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ------------------------------------------------------------ service state

    def service_down(self, err: BaseException) -> None:
        """Record that the service is unreachable and tell every page (once)."""
        message = error_json(err)["message"] or "unreachable"
        was = self.status["state"]
        self.status = {**self.status, "state": "disconnected", "message": message}
        if was != "disconnected":
            log.warning("service %s unreachable: %s", self.address, message)
            self.broadcast({"type": "service", **self.status})

    def service_up(self) -> None:
        """Record that the service answers and tell every page (once)."""
        if self.status["state"] != "connected":
            log.info("service %s connected", self.address)
            self.status = {**self.status, "state": "connected", "message": ""}
            self.broadcast({"type": "service", **self.status})

    def broadcast(self, msg: dict[str, Any]) -> None:
        """Queue a message to every client."""
        for client in self.clients:
            client.push(msg)

    # ------------------------------------------------------------ runs

    def runs_message(self) -> dict[str, Any]:
        """The current `runs` message."""
        return {"type": "runs", "runs": [run_json(r) for r in self.runs], "active": self.active}

    async def _poll_once(self) -> None:
        try:
            resp = await self.service.list_runs_page(page_size=200, timeout=3.0)
        except TrainsvcError as err:
            self.service_down(err)
            return
        self.service_up()
        self.runs = list(resp.runs)
        self.active = most_active(self.runs)
        msg = self.runs_message()
        text = _dumps(msg)
        if text != self._runs_msg:
            self._runs_msg = text
            self.broadcast(msg)
        for client in self.clients:
            watching = client.feed.run if client.feed is not None else None
            if client.auto and watching != self.active:
                self.attach(client, self.active, auto=True)

    async def _poll_loop(self) -> None:
        while True:
            self._refresh.clear()
            await _wait_event(self._refresh, self.poll_interval_s)
            await self._poll_once()

    # ------------------------------------------------------------ events

    async def _events_loop(self) -> None:
        backoff = 0.2
        while True:
            try:
                stream = self.service.stream_events(
                    "runs/-", from_sequence=self.last_event_sequence + 1, follow=True
                )
                async for event in stream:
                    self.last_event_sequence = max(self.last_event_sequence, event.sequence)
                    self._on_event(event)
                    backoff = 0.2
                await asyncio.sleep(0.5)
            except TrainsvcError as err:
                if is_unavailable(err):
                    self.service_down(err)
                await asyncio.sleep(backoff)
                backoff = min(2.0, backoff * 2)

    def _on_event(self, event: pb.Event) -> None:
        data = event_json(event)
        self.events.setdefault(event.run, deque(maxlen=EVENTS_KEPT)).append(data)
        msg = {"type": "event", "event": data}
        for client in self.clients:
            if client.feed is not None and client.feed.run == event.run:
                client.push(msg)
        if event.type == pb.Event.STATE_CHANGED:
            self._refresh.set()
        elif event.type == pb.Event.CHECKPOINT_SAVED:
            watchers = [c for c in self.clients if c.feed is not None and c.feed.run == event.run]
            if watchers:
                self._spawn(self._send_checkpoints(event.run, watchers))

    async def _send_checkpoints(self, run: str, clients: list[BrowserSession]) -> None:
        try:
            checkpoints = await self.service.list_checkpoints(run, timeout=10.0)
        except TrainsvcError as err:
            if is_unavailable(err):
                self.service_down(err)
            return
        msg = {
            "type": "checkpoints",
            "run": run,
            "checkpoints": [checkpoint_json(c) for c in checkpoints],
        }
        for client in clients:
            client.push(msg)

    # ------------------------------------------------------------ clients

    def add(self, client: BrowserSession, presets: list[dict[str, str]]) -> None:
        """Register a new client: greet it and attach it to the most active run."""
        self.clients.add(client)
        client.push(
            {
                "type": "hello",
                "protocol": PROTOCOL_VERSION,
                "presets": presets,
                "rate": client.rate_hz,
                "max_rate": MAX_RATE_HZ,
                "service": self.status,
            }
        )
        client.push(self.runs_message())
        self.attach(client, self.active, auto=True)

    def remove(self, client: BrowserSession) -> None:
        """Forget a client that disconnected."""
        self._detach(client)
        self.admin.unsubscribe(client)
        self.clients.discard(client)

    def _detach(self, client: BrowserSession) -> None:
        old = client.feed
        if old is not None:
            old.clients.discard(client)
            if not old.clients:
                old.idle_since = asyncio.get_running_loop().time()
        client.feed = None

    def attach(self, client: BrowserSession, run: str | None, *, auto: bool) -> None:
        """Point a client at `run` (None: no run) and send it that run's backlog."""
        client.auto = auto
        if client.feed is None or client.feed.run != run:
            self._detach(client)
            if run is not None:
                feed = self.feeds.get(run)
                if feed is None:
                    feed = RunFeed(self, run, self._next_feed_id)
                    self._next_feed_id += 1
                    self.feeds[run] = feed
                feed.clients.add(client)
                feed.idle_since = None
                client.feed = feed
        feed = client.feed
        # The page resets its view on `selected`: resend the backlog and the latest frame.
        client.sent_version = -1
        client.push({"type": "selected", "run": run, "auto": auto, "feed": feed.id if feed else 0})
        if feed is not None:
            client.push(feed.history_json())
            if feed.samples:
                client.push(feed.samples_json())
            client.push(
                {"type": "events", "run": feed.run, "events": list(self.events.get(feed.run, ()))}
            )
            self._spawn(self._send_checkpoints(feed.run, [client]))

    async def _reap_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(5.0)
            now = loop.time()
            for run, feed in list(self.feeds.items()):
                if feed.idle_since is not None and now - feed.idle_since > FEED_LINGER_S:
                    feed.close()
                    del self.feeds[run]

    # ------------------------------------------------------------ messages

    async def handle(self, client: BrowserSession, text: str) -> None:
        """Act on one JSON text message from a client.

        Every message gets its effect or an error reply, within the client's
        message budget (``MESSAGE_RATE_HZ``): a flood is dropped, not served.
        """
        if not client.allow_message(asyncio.get_running_loop().time()):
            return
        if _nesting_exceeds(text, MAX_MESSAGE_DEPTH):
            client.push(
                {
                    "type": "error",
                    "message": f"message: nested deeper than {MAX_MESSAGE_DEPTH} arrays/objects",
                }
            )
            return
        try:
            msg = _DECODER.decode(text)
        except (ValueError, RecursionError) as exc:
            client.push({"type": "error", "message": f"message: not JSON ({str(exc)[:80]})"})
            return
        kind = msg.get("type") if isinstance(msg, dict) else None
        if kind not in MESSAGE_TYPES:
            client.push(
                {
                    "type": "error",
                    "message": f"type: unknown {_short(kind)}; allowed: {', '.join(MESSAGE_TYPES)}",
                }
            )
            return
        if kind == "select":
            run = msg.get("run")
            if run is not None and (
                not isinstance(run, str) or not run.strip() or len(run) > MAX_RUN_CHARS
            ):
                client.push({"type": "error", "message": "run: a run name or null expected"})
                return
            if run is None:
                self.attach(client, self.active, auto=True)
                return
            name = run_name(run.strip())
            if not await self._run_exists(name):
                client.push({"type": "error", "message": f"run: no such run {_short(name)}"})
                return
            self.attach(client, name, auto=False)
        elif kind == "rate":
            hz = msg.get("hz")
            if (
                not isinstance(hz, int | float)
                or isinstance(hz, bool)
                or not 0.1 <= hz <= MAX_RATE_HZ
            ):
                client.push(
                    {
                        "type": "error",
                        "message": f"hz: must be a number in 0.1..{MAX_RATE_HZ:g}, got {_short(hz)}",
                    }
                )
                return
            client.rate_hz = float(hz)
            client.wake.set()
        elif kind == "admin":
            on = msg.get("on")
            if not isinstance(on, bool):
                client.push(
                    {"type": "error", "message": f"on: true or false expected, got {_short(on)}"}
                )
                return
            if on:
                self.admin.subscribe(client)
            else:
                self.admin.unsubscribe(client)
        else:
            if not _valid_req(msg.get("req")):
                client.push(
                    {
                        "type": "reply",
                        "req": None,
                        "ok": False,
                        "error": {
                            "code": "INVALID_ARGUMENT",
                            "message": f"req: null, a string of at most {MAX_REQ_CHARS} "
                            "characters or an integer expected",
                        },
                    }
                )
                return
            self._spawn(self._control(client, kind, msg))

    async def _run_exists(self, name: str) -> bool:
        """Whether the service has run ``name`` (known from polling, else asked once).

        Feeds are made only for runs that exist, so a flood of selects of made-up
        names cannot open one upstream stream each.
        """
        if name in self.feeds or any(r.name == name for r in self.runs):
            return True
        try:
            await self.service.get_run(name, timeout=5.0)
        except TrainsvcError as err:
            return err.code not in (
                grpc.StatusCode.NOT_FOUND,
                grpc.StatusCode.INVALID_ARGUMENT,
            )
        return True

    async def _control(self, client: BrowserSession, kind: str, msg: dict[str, Any]) -> None:
        req = msg.get("req")
        service = self.service
        try:
            if kind == "create":
                preset = PRESETS.get(str(msg.get("preset")))
                if preset is None:
                    allowed = ", ".join(PRESETS)
                    raise ValueError(f"preset: unknown {msg.get('preset')!r}; allowed: {allowed}")
                args = preset.create_args(seed=secrets.randbelow(2**31))
                run = await service.create_run(**args, timeout=CONTROL_TIMEOUT_S)
                reply: dict[str, Any] = {"run": run_json(run)}
            elif kind in ADMIN_CONTROLS:
                reply = await self.admin.control(kind, msg, CONTROL_TIMEOUT_S)
            else:
                target = msg.get("run")
                if not isinstance(target, str) or not target:
                    raise ValueError("run: the run to control is required")
                name = run_name(target)
                if kind == "checkpoint":
                    ckpt = await service.save_checkpoint(name, timeout=CONTROL_TIMEOUT_S)
                    reply = {"checkpoint": checkpoint_json(ckpt)}
                else:
                    control = {
                        "pause": service.pause_run,
                        "resume": service.resume_run,
                        "stop": service.stop_run,
                    }[kind]
                    reply = {"run": run_json(await control(name, timeout=CONTROL_TIMEOUT_S))}
        except ValueError as exc:
            client.push(
                {
                    "type": "reply",
                    "req": req,
                    "ok": False,
                    "error": {"code": "INVALID_ARGUMENT", "message": str(exc)},
                }
            )
            return
        except TrainsvcError as err:
            if is_unavailable(err):
                self.service_down(err)
            client.push({"type": "reply", "req": req, "ok": False, "error": error_json(err)})
            return
        client.push({"type": "reply", "req": req, "ok": True, **reply})
        self._refresh.set()

    # ------------------------------------------------------------ introspection

    def stats(self) -> dict[str, Any]:
        """Counters for tests and benchmarks: clients, their queues, the feeds."""
        return {
            "service": self.status["state"],
            "clients": [
                {
                    "rate_hz": c.rate_hz,
                    "run": c.feed.run if c.feed else None,
                    "outbox": len(c.outbox),
                    "dropped": c.dropped_total,
                    "messages_dropped": c.messages_dropped,
                    "frames_sent": c.frames_sent,
                }
                for c in self.clients
            ],
            "feeds": {
                run: {"clients": len(f.clients), "frames_received": f.frames_received}
                for run, f in self.feeds.items()
            },
            "admin": {"subscribers": len(self.admin.subscribers), "polls": self.admin.polls},
        }
