"""A subscriber that stops reading slows neither training nor other subscribers."""

from __future__ import annotations

import threading
import time
from typing import Any

import grpc
from trainsvc_api.v1 import trainsvc_pb2_grpc as pb_grpc
from trainsvc_client import pb

WINDOW_S = 4.0


def _measure(client: Any, name: str) -> tuple[int, int]:
    """Frames one reading subscriber gets and steps trained during WINDOW_S."""
    count = 0
    stream = client.stream_frames(name, max_rate_hz=1000)
    stop_at = [0.0]

    def read() -> None:
        nonlocal count
        for _ in stream:
            count += 1

    start_step = client.get_run(name).step
    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(WINDOW_S)
    stop_at[0] = time.monotonic()
    steps = client.get_run(name).step - start_step
    stream.cancel()
    reader.join(10)
    return count, steps


def test_stalled_subscribers_do_not_slow_others(
    shared_service: Any, tiny: dict[str, Any], wait_for: Any
) -> None:
    with shared_service.client() as c:
        run = c.create_run("emergence", step_budget=1_000_000, config=tiny)
        wait_for(c, run.name, lambda r: r.step > 20, what="warm-up")
        base_frames, base_steps = _measure(c, run.name)

        # Ten subscribers that never read a message (their flow-control windows fill up).
        channel = grpc.insecure_channel(shared_service.address)
        stub = pb_grpc.TrainServiceStub(channel)
        stalled = [
            stub.StreamFrames(pb.StreamFramesRequest(name=run.name, max_rate_hz=1000))
            for _ in range(10)
        ]
        # Let their flow-control windows fill first: until then the service is still sending
        # to them, which is ordinary streaming; the claim is about subscribers that are stuck.
        time.sleep(4.0)
        frames, steps = _measure(c, run.name)
        for call in stalled:
            call.cancel()
        channel.close()
        c.stop_run(run.name)
    assert base_frames > 10 and base_steps > 10
    # Generous margins: the machine is shared and noisy.
    assert frames >= 0.5 * base_frames, (frames, base_frames)
    assert steps >= 0.5 * base_steps, (steps, base_steps)
