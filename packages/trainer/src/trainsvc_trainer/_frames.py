"""Frames (live snapshots for dashboards) and a non-blocking, newest-wins publisher."""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Frame:
    """One live snapshot of environment 0.

    Attributes:
        step: the training step (policy updates done) when it was taken.
        wall_time: seconds since the Unix epoch.
        positions: agents' cells ``(n_agents, 2)`` as (row, col), ``int16`` (``int32``
            beyond 32,767 cells per side).
        field: the shared field ``(h, w)``, block-averaged by ``downsample`` when the
            full field has more cells than the limit; ``float32``, or ``uint8`` where
            ``value = field * field_scale / 255``.
        field_scale: the field's maximum for ``uint8`` frames (1.0 for ``float32``).
        downsample: the block size used (1 = full resolution). Positions are always
            in full-resolution cells.
        grid_shape: the full field's ``(H, W)``.
        metrics: the step's metrics.
    """

    step: int
    wall_time: float
    positions: npt.NDArray[np.integer]
    field: npt.NDArray[np.float32] | npt.NDArray[np.uint8]
    field_scale: float
    downsample: int
    grid_shape: tuple[int, int]
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)


def downsample_field(
    values: npt.NDArray[np.floating], max_cells: int
) -> tuple[npt.NDArray[np.float32], int]:
    """Block-averages ``values`` by the smallest integer factor that fits ``max_cells``.

    The field is a torus, so it is padded by wrapping to a multiple of the factor.
    Returns the field and the factor (1 when it already fits).
    """
    arr = np.asarray(values, dtype=np.float32)
    h, w = arr.shape
    factor = 1 if h * w <= max_cells else math.ceil(math.sqrt(h * w / max_cells))
    while math.ceil(h / factor) * math.ceil(w / factor) > max_cells:
        factor += 1
    if factor == 1:
        return arr, 1
    hh, ww = math.ceil(h / factor) * factor, math.ceil(w / factor) * factor
    padded = np.pad(arr, ((0, hh - h), (0, ww - w)), mode="wrap")
    out = padded.reshape(hh // factor, factor, ww // factor, factor).mean(axis=(1, 3))
    return out.astype(np.float32), factor


def make_frame(
    step: int,
    wall_time: float,
    positions: npt.ArrayLike,
    field_values: npt.ArrayLike,
    metrics: Mapping[str, float],
    *,
    max_cells: int,
    dtype: str,
) -> Frame:
    """Builds a :class:`Frame` from host arrays of one environment."""
    grid = np.asarray(field_values, dtype=np.float32)
    small, factor = downsample_field(grid, max_cells)
    scale = 1.0
    out: npt.NDArray[np.float32] | npt.NDArray[np.uint8] = small
    if dtype == "uint8":
        scale = float(max(small.max(), 0.0)) or 1.0
        out = np.clip(np.rint(small / scale * 255.0), 0, 255).astype(np.uint8)
    pos = np.asarray(positions)
    pos_dtype = np.int16 if max(grid.shape) <= np.iinfo(np.int16).max else np.int32
    return Frame(
        step=int(step),
        wall_time=float(wall_time),
        positions=pos.astype(pos_dtype),
        field=out,
        field_scale=scale,
        downsample=factor,
        grid_shape=(int(grid.shape[0]), int(grid.shape[1])),
        metrics=dict(metrics),
    )


class FramePublisher:
    """Delivers frames to a callback on a background thread; never blocks the caller.

    The queue holds one frame: publishing while the callback is still busy
    replaces the pending frame (newest wins) and counts the replaced one in
    :attr:`dropped`. A callback that raises is logged and does not stop training.
    """

    def __init__(self, callback: Callable[[Frame], None]) -> None:
        self._callback = callback
        self._cond = threading.Condition()
        self._pending: Frame | None = None
        self._closed = False
        self._busy = False
        self.published = 0
        self.delivered = 0
        self.dropped = 0
        self._thread = threading.Thread(target=self._loop, name="frame-publisher", daemon=True)
        self._thread.start()

    def publish(self, frame: Frame) -> None:
        """Queues ``frame``, replacing any frame not yet delivered."""
        with self._cond:
            if self._closed:
                return
            if self._pending is not None:
                self.dropped += 1
            self._pending = frame
            self.published += 1
            self._cond.notify()

    def flush(self, timeout: float | None = None) -> bool:
        """Waits until the pending frame (if any) has been delivered; returns False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._pending is None and not self._busy, timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Delivers the pending frame (waiting at most ``timeout``) and stops the thread."""
        self.flush(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending is not None or self._closed)
                if self._pending is None:
                    return
                frame, self._pending = self._pending, None
                self._busy = True
            try:
                self._callback(frame)
            except Exception:
                log.exception("frame callback failed at step %d", frame.step)
            finally:
                with self._cond:
                    self._busy = False
                    self.delivered += 1
                    self._cond.notify_all()
