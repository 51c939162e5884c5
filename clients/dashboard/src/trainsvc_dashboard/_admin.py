"""The admin view's data and controls: trajectory windows, model versions, traffic, events.

While at least one page shows the admin view (it sent ``{"type": "admin", "on": true}``),
one `AdminFeed` polls the service every `ADMIN_POLL_S` seconds — the trajectory store's
windows with their data quality (`TrajectoryService.ListWindows`), the registered models
with their traffic (`ModelService.ListModels`) and the model events after the last one
seen (`ListModelEvents`) — and sends an ``admin`` message to those pages when anything
changed. Promote and roll back go to the service as the bridge's own principal (its
service token); a page may send them under the same rules as the run controls.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from trainsvc_client import TrainsvcError
from trainsvc_client.aio import AsyncClient, is_unavailable

from trainsvc_dashboard._convert import model_event_json, model_json, trajectories_json

if TYPE_CHECKING:
    from trainsvc_dashboard._hub import BrowserSession

log = logging.getLogger("trainsvc_dashboard")

ADMIN_POLL_S = 2.0
"""How often the admin data is read while a page shows the admin view."""
ADMIN_WINDOWS = 50
"""The newest windows listed."""
MODEL_EVENTS_KEPT = 200
"""The newest model events sent to the page."""
ADMIN_TIMEOUT_S = 10.0
MAX_MODEL_CHARS = 100
MAX_REASON_CHARS = 500
DEFAULT_REASON = "from the dashboard"
ADMIN_CONTROLS = ("promote", "rollback")


def _dumps(msg: dict[str, Any]) -> str:
    return json.dumps(msg, separators=(",", ":"), allow_nan=False, default=str)


def _error(err: TrainsvcError) -> dict[str, str]:
    return {"code": err.code.name, "message": err.details}


def _model_arg(msg: dict[str, Any]) -> str:
    model = msg.get("model")
    if not isinstance(model, str) or not model.strip() or len(model) > MAX_MODEL_CHARS:
        raise ValueError(f"model: a model name of at most {MAX_MODEL_CHARS} characters expected")
    return model.strip()


def _reason_arg(msg: dict[str, Any]) -> str:
    reason = msg.get("reason")
    if reason is None or reason == "":
        return DEFAULT_REASON
    if not isinstance(reason, str) or len(reason) > MAX_REASON_CHARS:
        raise ValueError(f"reason: a string of at most {MAX_REASON_CHARS} characters expected")
    return reason


def promote_args(msg: dict[str, Any]) -> tuple[str, int, float, str]:
    """(model, version, fraction, reason) of a ``promote`` message.

    Raises:
        ValueError: a field is missing or malformed (the message names it).
    """
    model = _model_arg(msg)
    version = msg.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version < 2**53:
        raise ValueError(f"version: a version number (1, 2, ...) expected, got {version!r}"[:120])
    fraction = msg.get("fraction")
    if (
        not isinstance(fraction, int | float)
        or isinstance(fraction, bool)
        or not math.isfinite(fraction)
        or not 0 < fraction <= 1
    ):
        raise ValueError(f"fraction: a number in (0, 1] expected, got {fraction!r}"[:120])
    return model, version, float(fraction), _reason_arg(msg)


class AdminFeed:
    """Polls the admin data while pages watch it, and runs promote / roll back.

    Args:
        service: the bridge's asyncio client.
        on_unavailable: called when the service cannot be reached (the hub's banner).
        poll_s: seconds between polls.
    """

    def __init__(
        self,
        service: AsyncClient,
        on_unavailable: Callable[[TrainsvcError], None],
        poll_s: float = ADMIN_POLL_S,
    ) -> None:
        self.service = service
        self.on_unavailable = on_unavailable
        self.poll_s = poll_s
        self.subscribers: set[BrowserSession] = set()
        self.events: deque[dict[str, Any]] = deque(maxlen=MODEL_EVENTS_KEPT)
        self.last_sequence = 0
        self.polls = 0
        self._text = ""
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def subscribe(self, client: BrowserSession) -> None:
        """Send ``client`` the admin data now (when read already) and on every change."""
        self.subscribers.add(client)
        if self._text:
            client.push(json.loads(self._text))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._loop(), name="admin feed")
        else:
            self.refresh()

    def unsubscribe(self, client: BrowserSession) -> None:
        """Stop sending to ``client``; the polling stops with the last subscriber."""
        self.subscribers.discard(client)
        if not self.subscribers and self._task is not None:
            self._task.cancel()
            self._task = None

    def refresh(self) -> None:
        """Poll now (after a change made from a page)."""
        self._wake.set()

    async def close(self) -> None:
        """Stop polling."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task], timeout=5.0)
            self._task = None

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.poll_once()
            except Exception:  # a bug here must not end the polling for good
                log.exception("admin poll failed")
            try:
                async with asyncio.timeout(self.poll_s):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def poll_once(self) -> None:
        """Read everything once and send it to the subscribers if it changed."""
        self.polls += 1
        msg: dict[str, Any] = {"type": "admin"}
        windows, models, events = await asyncio.gather(
            self.service.trajectories.list_windows_page(
                page_size=ADMIN_WINDOWS, timeout=ADMIN_TIMEOUT_S
            ),
            self.service.models.list(timeout=ADMIN_TIMEOUT_S),
            self.service.models.events(after=self.last_sequence, timeout=ADMIN_TIMEOUT_S),
            return_exceptions=True,
        )
        for part in (windows, models, events):
            if isinstance(part, BaseException) and not isinstance(part, TrainsvcError):
                raise part
            if isinstance(part, TrainsvcError) and is_unavailable(part):
                self.on_unavailable(part)
        if isinstance(windows, TrainsvcError):
            msg["trajectories"], msg["trajectories_error"] = None, _error(windows)
        elif not isinstance(windows, BaseException):
            msg["trajectories"], msg["trajectories_error"] = trajectories_json(windows), None
        if isinstance(models, TrainsvcError):
            msg["models"], msg["models_error"] = [], _error(models)
        elif not isinstance(models, BaseException):
            msg["models"], msg["models_error"] = [model_json(m) for m in models], None
        if not isinstance(events, BaseException):
            self._add_events([model_event_json(e) for e in events])
        msg["events"] = list(reversed(self.events))  # newest first
        text = _dumps(msg)
        if text != self._text:
            self._text = text
            for client in self.subscribers:
                client.push(msg)

    def _add_events(self, events: list[dict[str, Any]]) -> None:
        if events and events[0]["sequence"] <= self.last_sequence:
            self.events.clear()  # a different registry (the service's data was replaced)
        self.events.extend(events)
        if events:
            self.last_sequence = events[-1]["sequence"]

    async def control(self, kind: str, msg: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Run ``promote`` or ``rollback``; returns the reply's fields (the new split).

        Raises:
            ValueError: a malformed message (the text names the field).
            TrainsvcError: the service refused it (its status and message).
        """
        models = self.service.models
        if kind == "promote":
            model, version, fraction, reason = promote_args(msg)
            deployment = await models.promote(
                model, version, fraction, reason=reason, timeout=timeout
            )
        else:
            model, reason = _model_arg(msg), _reason_arg(msg)
            deployment = await models.rollback(model, reason=reason, timeout=timeout)
        self.refresh()
        traffic = {str(v): s for v, s in sorted(deployment.traffic.items())}
        return {"model": deployment.model or model, "traffic": traffic}


__all__ = ["ADMIN_CONTROLS", "AdminFeed", "promote_args"]
