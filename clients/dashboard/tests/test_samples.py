"""The bridge keeps a lora run's recent sample completions for pages that join late."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

from trainsvc_api.v1 import trainsvc_pb2 as pb
from trainsvc_dashboard._hub import SAMPLES_KEPT, RunFeed


class _SilentService:
    """A service whose frame stream stays open and sends nothing (frames are published by hand)."""

    def stream_frames(self, *args: Any, **kwargs: Any) -> AsyncIterator[pb.Frame]:
        async def never() -> AsyncIterator[pb.Frame]:
            await asyncio.Event().wait()
            yield pb.Frame()

        return never()


def _lm(step: int, sample_step: int, completion: str = "") -> pb.Frame:
    return pb.Frame(
        run="runs/l",
        step=step,
        metrics={"train_loss": 1.0},
        lm=pb.LMPayload(
            sample_prompt="q",
            sample_completion=completion or f"c{sample_step}",
            sample_step=sample_step,
        ),
    )


def _feed_samples(frames: list[pb.Frame]) -> dict[str, Any]:
    async def run() -> dict[str, Any]:
        hub = SimpleNamespace(service=_SilentService())
        feed = RunFeed(hub, "runs/l", 4)  # type: ignore[arg-type]
        try:
            for frame in frames:
                feed.publish(frame)
            return feed.samples_json()
        finally:
            feed.close()

    return asyncio.run(run())


def test_each_sample_is_kept_once_although_every_frame_repeats_it() -> None:
    msg = _feed_samples([_lm(5, 5), _lm(6, 5), _lm(7, 5), _lm(10, 10), pb.Frame(step=11)])
    assert msg["type"] == "samples" and msg["feed"] == 4 and msg["run"] == "runs/l"
    assert [(s["step"], s["completion"]) for s in msg["samples"]] == [(5, "c5"), (10, "c10")]
    assert msg["samples"][0]["prompt"] == "q"


def test_frames_before_the_first_sample_add_none_and_only_the_newest_are_kept() -> None:
    frames = [_lm(1, 0)] + [_lm(s, s) for s in range(1, SAMPLES_KEPT + 6)]
    steps = [s["step"] for s in _feed_samples(frames)["samples"]]
    assert steps == list(range(6, SAMPLES_KEPT + 6))


def test_a_run_resumed_from_an_earlier_checkpoint_starts_its_samples_anew() -> None:
    steps = [s["step"] for s in _feed_samples([_lm(20, 20), _lm(30, 30), _lm(16, 15)])["samples"]]
    assert steps == [15]
