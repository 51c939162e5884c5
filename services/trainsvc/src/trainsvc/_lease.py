"""The control-plane lease: exactly one service instance acts on a shared registry.

A row of ``registry_lease`` names the holder, a generation (one more at every
acquisition) and an expiry, all timed by the database server's clock:

- `Lease.try_acquire` is one compare-and-set transaction: take the row when it is
  missing or expired (never while another holder's expiry lies ahead);
- the holder renews it every ``renew_s`` (`Lease.renew`: only while the row still
  names it at its generation);
- `Lease.release` expires it at once (a graceful stop), so a standby need not wait.

`LeaseKeeper` runs this in threads: it polls until the lease is won, hands the
generation to ``on_acquired`` (in a thread of its own, so renewals go on while the
new holder recovers its runs), renews, and calls ``on_lost`` when the lease is gone
— taken over, or not renewed for long enough that a standby may take it, whichever
comes first; a watchdog decides the latter from the local clock, so a renewal that
hangs on a partitioned network cannot hide it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from trainsvc._registry import LEASE_NAME
from trainsvc._registry_db import Connection, RegistryLocation

log = logging.getLogger("trainsvc.lease")

DEFAULT_TTL_S = 10.0
"""How long a lease lasts without renewal (a standby takes over this long after the
holder's last renewal, at most)."""


@dataclass(frozen=True)
class LeaseHolder:
    """The lease's row as the database saw it."""

    holder: str
    generation: int
    expires_in_s: float
    """Seconds until it expires, by the database's clock (negative: expired)."""


class Lease:
    """The lease row of one registry, on a connection of its own (not thread-safe)."""

    def __init__(self, location: RegistryLocation, holder: str, ttl_s: float) -> None:
        if ttl_s <= 0:
            raise ValueError(f"ttl_s: must be > 0, got {ttl_s}")
        self.location = location
        self.holder = holder
        self.ttl_s = ttl_s
        self._conn = Connection(location)

    def _now(self) -> str:
        return self._conn.dialect.now

    def try_acquire(self) -> int | None:
        """Take the lease when it is free or expired; its new generation, or None when
        another holder's lease is still running."""
        now = self._now()
        self._conn.reconnect_if_broken()
        with self._conn.transaction() as db:
            row = db.execute(
                f"UPDATE registry_lease SET holder=?, generation=generation+1, acquired_at={now},"
                f" expires_at={now} + ? WHERE name=? AND expires_at < {now} RETURNING generation",
                (self.holder, self.ttl_s, LEASE_NAME),
            ).fetchone()
            if row is None:
                row = db.execute(
                    "INSERT INTO registry_lease (name, holder, generation, acquired_at, expires_at)"
                    f" VALUES (?, ?, 1, {now}, {now} + ?) ON CONFLICT (name) DO NOTHING"
                    " RETURNING generation",
                    (LEASE_NAME, self.holder, self.ttl_s),
                ).fetchone()
        return None if row is None else int(row[0])

    def renew(self, generation: int) -> bool:
        """Extend the lease by ``ttl_s`` from now; False when it is no longer ours."""
        self._conn.reconnect_if_broken()
        cur = self._conn.execute(
            f"UPDATE registry_lease SET expires_at={self._now()} + ?"
            " WHERE name=? AND holder=? AND generation=?",
            (self.ttl_s, LEASE_NAME, self.holder, generation),
        )
        return int(cur.rowcount) == 1

    def release(self, generation: int) -> None:
        """Expire our lease now (a standby takes over at its next poll)."""
        self._conn.reconnect_if_broken()
        self._conn.execute(
            f"UPDATE registry_lease SET expires_at={self._now()} - 1"
            " WHERE name=? AND holder=? AND generation=?",
            (LEASE_NAME, self.holder, generation),
        )

    def current(self) -> LeaseHolder | None:
        """The lease's row, or None when no instance ever held it."""
        self._conn.reconnect_if_broken()
        row = self._conn.execute(
            f"SELECT holder, generation, expires_at - {self._now()} FROM registry_lease"
            " WHERE name=?",
            (LEASE_NAME,),
        ).fetchone()
        return None if row is None else LeaseHolder(row[0], int(row[1]), float(row[2]))

    def close(self) -> None:
        """Close its connection."""
        self._conn.close()


class LeaseKeeper:
    """Wins, keeps and gives up a `Lease` in background threads (see the module doc)."""

    def __init__(
        self,
        lease: Lease,
        *,
        on_acquired: Callable[[int], None],
        on_lost: Callable[[str], None],
        renew_s: float | None = None,
        poll_s: float = 1.0,
    ) -> None:
        self.lease = lease
        self.renew_s = renew_s if renew_s is not None else lease.ttl_s / 5
        self.poll_s = poll_s
        # Stop acting this long after the start of the last renewal that succeeded: the
        # lease lasts ttl_s from a moment after that start, so a standby cannot take it
        # before; two renewal periods are left for the workers to be killed.
        self.give_up_after_s = lease.ttl_s - 2 * self.renew_s
        self._on_acquired = on_acquired
        self._on_lost = on_lost
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.generation: int | None = None
        self.holder: LeaseHolder | None = None
        """The lease's holder as last seen while waiting (for messages to callers)."""
        self._last_renewed = 0.0
        self._lost = False
        self._closed = False
        self._threads: list[threading.Thread] = []

    @property
    def active(self) -> bool:
        """This instance holds the lease."""
        return self.generation is not None and not self._lost

    def start(self) -> None:
        """Start polling for the lease."""
        thread = threading.Thread(target=self._run, name="lease", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _run(self) -> None:
        generation = None
        while generation is None and not self._stop.is_set():
            started = time.monotonic()
            try:
                generation = self.lease.try_acquire()
                if generation is None:
                    self.holder = self.lease.current()
            except Exception as exc:
                log.warning(
                    "the registry's lease could not be read: %s", " ".join(str(exc).split())
                )
            if generation is None:
                self._stop.wait(self.poll_s)
        if generation is None:
            return
        with self._lock:
            self.generation = generation
            self._last_renewed = started
        log.warning(
            "this instance holds the registry's lease",
            extra={"holder": self.lease.holder, "generation": generation},
        )
        watchdog = threading.Thread(target=self._watch, name="lease-watchdog", daemon=True)
        takeover = threading.Thread(
            target=self._on_acquired, args=(generation,), name="lease-takeover", daemon=True
        )
        self._threads += [watchdog, takeover]
        watchdog.start()
        takeover.start()
        while not self._stop.wait(self.renew_s):
            started = time.monotonic()
            try:
                ours = self.lease.renew(generation)
            except Exception as exc:
                log.warning("renewing the registry's lease failed: %s", " ".join(str(exc).split()))
                continue
            if not ours:
                self._lose("another instance took the registry's lease over")
                return
            with self._lock:
                self._last_renewed = max(self._last_renewed, started)

    def _watch(self) -> None:
        step = min(0.25, self.renew_s / 4)
        while not self._stop.wait(step):
            with self._lock:
                silent = time.monotonic() - self._last_renewed
            if silent > self.give_up_after_s:
                self._lose(
                    f"the registry's lease was not renewed for {silent:.1f} s (the lease lasts "
                    f"{self.lease.ttl_s:g} s): a standby may take it over"
                )
                return

    def _lose(self, reason: str) -> None:
        with self._lock:
            if self._lost or self._stop.is_set():
                return
            self._lost = True
        self._stop.set()
        self._on_lost(reason)

    def stop(self, *, release: bool) -> None:
        """Stop renewing; with ``release``, expire the lease at once for a standby."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._stop.set()
        generation = self.generation
        if release and generation is not None and not self._lost:
            try:
                self.lease.release(generation)
            except Exception as exc:
                log.warning("releasing the registry's lease failed: %s", exc)
        for thread in self._threads:
            if thread is not threading.current_thread() and thread.name != "lease-takeover":
                thread.join(5.0)
        self.lease.close()
