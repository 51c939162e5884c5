"""Newest-wins subscriber slots and the stream cap."""

from __future__ import annotations

import asyncio
import threading

import pytest
from trainsvc._domain import ResourceExhaustedError
from trainsvc._fanout import Hub


def test_newest_wins_and_a_stalled_subscriber_holds_one_item() -> None:
    async def scenario() -> None:
        hub: Hub[int] = Hub(max_subscribers=2)
        loop = asyncio.get_running_loop()
        reader = hub.subscribe("run", loop)
        stalled = hub.subscribe("run", loop)
        with pytest.raises(ResourceExhaustedError):
            hub.subscribe("run", loop)

        def publish() -> None:  # from another thread, like a worker's reader thread
            for i in range(1000):
                hub.publish("run", i)

        thread = threading.Thread(target=publish)
        thread.start()
        thread.join()
        assert await reader.next(timeout=1.0) == 999
        assert stalled.take() == 999  # one slot, the newest item
        assert stalled.dropped == 999
        hub.close_topic("run")
        assert await reader.next(timeout=1.0) is None and reader.closed
        hub.unsubscribe("run", reader)
        hub.unsubscribe("run", stalled)
        assert hub.subscriber_count() == 0
        late = hub.subscribe("run", loop)  # a new subscriber starts from the newest item
        assert late.take() == 999

    asyncio.run(scenario())
