"""Emergency checkpoints on SIGTERM / SIGINT, with an atexit fallback."""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

HANDLED = (signal.SIGTERM, signal.SIGINT)


class SignalHandlers:
    """The handlers :meth:`CheckpointManager.install_signal_handlers` installs.

    A signal that arrives while the manager is inside ``save`` or
    ``save_emergency`` is deferred to the end of that call, so the handler
    never sees the manager half-way through changing its own state.

    Args:
        emergency: saves the emergency checkpoint; given the signal's name (``"SIGTERM"``).
        wait: finishes pending writes (before re-raising, and at interpreter exit).
    """

    def __init__(self, emergency: Callable[[str], None], wait: Callable[[], None]) -> None:
        self._emergency = emergency
        self._wait = wait
        self._previous: dict[int, Any] = {}
        self._depth = 0
        self._pending: int | None = None
        self._handling = False

    def install(self) -> None:
        """Install the handlers and the atexit hook (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            raise ValueError(
                "install_signal_handlers: expected to be called from the main thread "
                f"(Python delivers signals there), found thread {threading.current_thread().name!r}"
            )
        for sig in HANDLED:
            self._previous[sig] = signal.signal(sig, self._on_signal)
        atexit.register(self._at_exit)

    def uninstall(self) -> None:
        """Put back the handlers that were there before and drop the atexit hook."""
        if threading.current_thread() is threading.main_thread():
            for sig, previous in self._previous.items():
                if signal.getsignal(sig) == self._on_signal:
                    signal.signal(sig, previous)
        atexit.unregister(self._at_exit)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Hold signals that arrive inside the block until it ends."""
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0 and self._pending is not None and not self._handling:
                signum, self._pending = self._pending, None
                self._handle(signum)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._depth > 0 or self._handling:
            if self._pending is None:
                self._pending = signum
            return
        self._handle(signum)

    def _handle(self, signum: int) -> None:
        self._handling = True
        name = signal.Signals(signum).name
        try:
            self._emergency(name)
        except BaseException as exc:
            print(
                f"trainsvc-checkpoint: {name}: the emergency checkpoint failed: {exc!r}",
                file=sys.stderr,
                flush=True,
            )
        with contextlib.suppress(BaseException):
            self._wait()
        self._reraise(signum)

    def _reraise(self, signum: int) -> None:
        previous = self._previous.get(signum, signal.SIG_DFL)
        self.uninstall()
        self._handling = False
        if previous is signal.SIG_IGN:
            return
        if callable(previous) and previous is not signal.default_int_handler:
            previous(signum, None)
            return
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        os._exit(128 + signum)  # pragma: no cover - only if the signal is blocked

    def _at_exit(self) -> None:
        if self._pending is not None and not self._handling:
            signum, self._pending = self._pending, None
            self._handle(signum)
            return
        try:
            self._wait()
        except BaseException as exc:
            print(f"trainsvc-checkpoint: at exit: {exc}", file=sys.stderr, flush=True)
