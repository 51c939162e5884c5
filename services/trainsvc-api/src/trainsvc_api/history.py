"""A run's metric history in bounded memory that still spans the whole run.

Shared by the service (which keeps each run's history and serves it with
``GetRunMetrics``) and the dashboard (which extends it with live frames).

A fixed-size window (the last N points) shows only the end of a long run, and
its curves look flat. `MetricHistory` keeps every point until it is full, then
drops every other point and from then on keeps one point in two (then four,
eight, …), so it always spans the run from its first point to the newest one
with evenly thinned points in between.
"""

from __future__ import annotations

Point = tuple[int, dict[str, float]]


class MetricHistory:
    """Points ``(step, metrics)`` in step order, at most ``capacity`` (plus the newest).

    Args:
        capacity: the most points kept before halving (at least 2).
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 2:
            raise ValueError(f"capacity: must be at least 2, got {capacity}")
        self.capacity = capacity
        self.stride = 1
        """One point in ``stride`` is kept (doubles at every halving)."""
        self._points: list[Point] = []
        self._latest: Point | None = None
        self._seen = 0

    def add(self, step: int, metrics: dict[str, float]) -> None:
        """Record a point; the same step again replaces it, an earlier step forgets what followed.

        A step below the newest one means the run resumed from an earlier
        checkpoint: the points after it no longer describe the run.
        """
        if self._latest is not None and step <= self._latest[0]:
            self._points = [p for p in self._points if p[0] < step]
            if step < self._latest[0]:
                self._seen = len(self._points) * self.stride
        self._latest = (step, metrics)
        if self._points and self._points[-1][0] == step:
            self._points[-1] = self._latest
            return
        if self._seen % self.stride == 0:
            self._points.append(self._latest)
            if len(self._points) >= self.capacity:
                self._points = self._points[::2]
                self.stride *= 2
        self._seen += 1

    def points(self) -> list[Point]:
        """The kept points, oldest first, ending with the newest point recorded."""
        if self._latest is None:
            return []
        if self._points and self._points[-1][0] == self._latest[0]:
            return list(self._points)
        return [*self._points, self._latest]

    def __len__(self) -> int:
        return len(self.points())


__all__ = ["MetricHistory", "Point"]
