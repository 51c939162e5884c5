"""Frame fan-out: per-subscriber newest-wins slots, woken across threads.

The publisher (a worker's reader thread) never waits on a subscriber: it puts
the frame in each subscriber's one-frame slot (replacing an unread one, which
counts as dropped) and schedules a wake-up on the subscriber's event loop.
A subscriber that stops reading holds at most one frame.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Generic, TypeVar

from trainsvc._domain import ResourceExhaustedError

T = TypeVar("T")


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
