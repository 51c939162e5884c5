"""Frame fan-out: per-subscriber newest-wins slots, woken across threads, and paced streams.

The publisher (a worker's reader thread) never waits on a subscriber: it puts
the frame in each subscriber's one-frame slot (replacing an unread one, which
counts as dropped) and schedules a wake-up on the subscriber's event loop.
A subscriber that stops reading holds at most one frame. `FrameStreams` sends
each stream call its run's newest frame at the call's own rate, and one
watchdog cuts off calls stuck in a send.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from trainsvc._domain import ResourceExhaustedError

T = TypeVar("T")
log = logging.getLogger("trainsvc.rpc")

SEND_TIMEOUT_S = 30.0
"""A subscriber that has not taken a message for this long is cut off."""
WATCHDOG_INTERVAL_S = 1.0
"""How often frame streams are checked for stuck sends and woken to re-check their run."""


class Subscriber(Generic[T]):
    """One stream's slot: the newest item not yet taken."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._event = asyncio.Event()
        self._lock = threading.Lock()
        self._item: T | None = None
        self._wake_pending = False
        self._waiting = False
        """A `wait`/`next` may be blocked: only then does a new item need a wake-up."""
        self.closed = False
        self.dropped = 0

    def _wake(self) -> None:
        with self._lock:
            self._wake_pending = False
            self._waiting = False
        self._event.set()

    def _schedule_wake(self) -> None:
        # Called with self._lock held; at most one wake-up in flight.
        if not self._wake_pending:
            self._wake_pending = True
            try:
                self._loop.call_soon_threadsafe(self._wake)
            except RuntimeError:  # the loop is closed: the stream is gone
                self.closed = True

    def offer(self, item: T) -> bool:
        """Put `item` in the slot (from any thread); return False if one was replaced."""
        replaced, _ = self._put(item, schedule=True)
        return not replaced

    def _put(self, item: T, *, schedule: bool) -> tuple[bool, bool]:
        """Fill the slot; return (replaced an unread item, a wake-up is needed)."""
        with self._lock:
            replaced = self._item is not None
            if replaced:
                self.dropped += 1
            self._item = item
            # A subscriber that is not waiting (sending, or sleeping out its rate limit)
            # takes the item when it next looks: no cross-thread wake-up for it.
            need_wake = self._waiting and not self._wake_pending
            if need_wake:
                if schedule:
                    self._schedule_wake()
                else:
                    self._wake_pending = True
        return replaced, need_wake

    def close(self) -> None:
        """End the subscription (from any thread): `next` returns None once drained."""
        with self._lock:
            self.closed = True
            self._schedule_wake()

    def take(self) -> T | None:
        """Take the slot's item now without waiting (None when empty)."""
        with self._lock:
            item, self._item = self._item, None
        return item

    async def wait(self) -> None:
        """Wait until the slot may hold an item or the subscription closed (no timeout).

        Returns at once if either is already so; callers re-check with `take()`.
        Wake-ups can be spurious (`poke`), so callers loop.
        """
        with self._lock:
            if self._item is not None or self.closed:
                return
            self._event.clear()
            self._waiting = True
        await self._event.wait()

    def poke(self) -> None:
        """Wake a waiting `wait()` (on the subscriber's loop) so its caller re-checks its state."""
        self._event.set()

    async def next(self, timeout: float) -> T | None:
        """Wait up to `timeout` s for an item; None on timeout or when closed and empty."""
        while True:
            with self._lock:
                item, self._item = self._item, None
                if item is not None or self.closed:
                    return item
                self._event.clear()
                self._waiting = True
            try:
                async with asyncio.timeout(timeout):
                    await self._event.wait()
            except TimeoutError:
                return None


WAKE_CHUNK = 8
"""Subscribers woken per event-loop turn when a frame arrives: a control RPC that comes in
meanwhile waits behind at most this many sends, not behind every stream of the run."""


def _wake_all(subs: list[Subscriber[Any]], start: int = 0) -> None:
    end = start + WAKE_CHUNK
    for sub in subs[start:end]:
        sub._wake()
    if end < len(subs):
        # Queued behind the woken streams' sends and anything that arrived meanwhile.
        subs[0]._loop.call_soon(_wake_all, subs, end)


class Hub(Generic[T]):
    """Subscribers per topic (a run id), with a cap on concurrent subscribers."""

    def __init__(self, max_subscribers: int) -> None:
        self.max_subscribers = max_subscribers
        self._lock = threading.Lock()
        self._topics: dict[str, set[Subscriber[T]]] = {}
        self._latest: dict[str, T] = {}
        self._count = 0
        self.dropped = 0
        """Items replaced in a slot before their subscriber took them, over all subscribers."""

    def subscribe(self, topic: str, loop: asyncio.AbstractEventLoop) -> Subscriber[T]:
        """Add a subscriber; it starts with the topic's newest item, if any.

        Raises:
            ResourceExhaustedError: the cap on concurrent subscribers is reached.
        """
        sub: Subscriber[T] = Subscriber(loop)
        with self._lock:
            if self._count >= self.max_subscribers:
                raise ResourceExhaustedError(
                    f"too many concurrent streams (max {self.max_subscribers}); try again later"
                )
            self._count += 1
            self._topics.setdefault(topic, set()).add(sub)
            latest = self._latest.get(topic)
        if latest is not None:
            sub.offer(latest)  # an empty slot: nothing is replaced
        return sub

    def unsubscribe(self, topic: str, sub: Subscriber[T]) -> None:
        """Remove a subscriber."""
        with self._lock:
            subs = self._topics.get(topic)
            if subs is not None and sub in subs:
                subs.discard(sub)
                self._count -= 1

    def publish(self, topic: str, item: T) -> int:
        """Offer `item` to every subscriber of `topic`; return how many replaced an unread one."""
        with self._lock:
            self._latest[topic] = item
            subs = list(self._topics.get(topic, ()))
        replaced = 0
        to_wake: dict[asyncio.AbstractEventLoop, list[Subscriber[T]]] = {}
        for sub in subs:
            was_replaced, need_wake = sub._put(item, schedule=False)
            replaced += was_replaced
            if need_wake:
                to_wake.setdefault(sub._loop, []).append(sub)
        for loop, batch in to_wake.items():  # one cross-thread wake-up per loop, not per subscriber
            try:
                loop.call_soon_threadsafe(_wake_all, batch)
            except RuntimeError:  # the loop is closed
                for sub in batch:
                    sub.closed = True
        if replaced:
            with self._lock:
                self.dropped += replaced
        return replaced

    def close_topic(self, topic: str) -> None:
        """Tell the topic's subscribers that nothing more will come."""
        with self._lock:
            subs = list(self._topics.get(topic, ()))
        for s in subs:
            s.close()

    def subscriber_count(self) -> int:
        """Current number of subscribers over all topics."""
        with self._lock:
            return self._count


class Notifier:
    """Wakes async waiters (on any loop) when something new happened (from any thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: set[Subscriber[bool]] = set()

    def register(self, loop: asyncio.AbstractEventLoop) -> Subscriber[bool]:
        """Return a slot that receives True on each `notify()`."""
        sub: Subscriber[bool] = Subscriber(loop)
        with self._lock:
            self._waiters.add(sub)
        return sub

    def unregister(self, sub: Subscriber[bool]) -> None:
        """Forget a waiter."""
        with self._lock:
            self._waiters.discard(sub)

    def notify(self) -> None:
        """Wake every waiter."""
        with self._lock:
            waiters = list(self._waiters)
        for w in waiters:
            w.offer(True)


async def send_or_cut(send: Awaitable[None], peer: str) -> bool:
    """Await a ``send``; False (and a warning) when the peer took longer than
    `SEND_TIMEOUT_S` to take it: the caller then ends its stream."""
    try:
        async with asyncio.timeout(SEND_TIMEOUT_S):
            await send
    except TimeoutError:
        log.warning("cutting off a subscriber that stopped reading (%s)", peer)
        return False
    return True


@dataclass(eq=False)
class _FrameStream:
    """A frame stream, as the watchdog sees it."""

    task: asyncio.Task[Any]
    sub: Subscriber[bytes]
    write_since: float = 0.0
    """Loop time the pending send started; 0 when none is pending."""
    cut: bool = False


class FrameStreams:
    """Paced frame streams over a `Hub` of pre-serialized frames, with one send watchdog.

    Args:
        hub: the frames, one topic per run.
        is_active: whether a run may still publish frames (its stream ends when not).
    """

    def __init__(self, hub: Hub[bytes], is_active: Callable[[str], bool]) -> None:
        self.hub = hub
        self.is_active = is_active
        self.frames_sent = 0
        """Frames sent by every stream (only the event loop's thread adds to it)."""
        self._streams: set[_FrameStream] = set()
        self._watchdog: asyncio.Task[None] | None = None

    def _ensure_watchdog(self) -> None:
        if self._watchdog is None or self._watchdog.done():
            self._watchdog = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        """Once a second: cut off streams stuck in a send, and wake every waiting one.

        One timer for all streams instead of a timeout per frame and per stream. The wake-up
        lets a stream re-check that its run is still active and its call still open.
        """
        loop = asyncio.get_running_loop()
        while self._streams:
            await asyncio.sleep(WATCHDOG_INTERVAL_S)
            now = loop.time()
            for stream in list(self._streams):
                if stream.write_since and now - stream.write_since > SEND_TIMEOUT_S:
                    if not stream.cut:
                        stream.cut = True
                        stream.task.cancel()
                else:
                    stream.sub.poke()

    async def stream(
        self,
        run_id: str,
        rate: float,
        write: Callable[[bytes], Awaitable[None]],
        closed: Callable[[], bool],
        peer: str,
    ) -> None:
        """Send the run's newest frame with ``write`` at most ``rate`` times a second.

        After a send the stream sleeps out the rest of its interval first (frames that come
        meanwhile replace each other in the slot and count as dropped), then takes the
        newest frame or waits for one: one wake-up per frame sent, not per frame published.
        Returns when the run ends, ``closed()`` (the call ended) or the peer stops reading.
        """
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        sub = self.hub.subscribe(run_id, loop)
        stream = _FrameStream(task, sub)
        self._streams.add(stream)
        self._ensure_watchdog()
        interval = 1.0 / rate
        next_send = 0.0
        # The first frame goes at once; the second after a random extra part of an
        # interval, so that streams opened together do not send in lockstep bursts
        # (which would hold a control RPC behind every stream's send).
        phase: float | None = random.random() * interval
        try:
            if not self.is_active(run_id):
                sub.close()
            while True:
                # Sleep out the interval in slices of at most a second, so that a slow
                # stream (max_rate_hz 0.01: 100 s) still ends within a second of its run.
                while (wait := next_send - loop.time()) > 0:
                    await asyncio.sleep(min(wait, WATCHDOG_INTERVAL_S))
                    if wait > WATCHDOG_INTERVAL_S and (
                        sub.closed or closed() or not self.is_active(run_id)
                    ):
                        return
                frame = sub.take()
                while frame is None:
                    if sub.closed or closed() or not self.is_active(run_id):
                        return
                    await sub.wait()
                    frame = sub.take()
                stream.write_since = loop.time()
                await write(frame)
                self.frames_sent += 1
                stream.write_since = 0.0
                next_send = loop.time() + interval
                if phase is not None:
                    next_send, phase = next_send + phase, None
        except asyncio.CancelledError:
            if not stream.cut:
                raise
            task.uncancel()
            log.warning("cutting off a subscriber that stopped reading (%s)", peer)
        finally:
            self._streams.discard(stream)
            self.hub.unsubscribe(run_id, sub)
