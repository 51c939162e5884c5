"""Newest-wins subscriber slots and the stream cap."""

from __future__ import annotations

import asyncio
import threading

import pytest
from trainsvc._domain import ResourceExhaustedError
from trainsvc._fanout import WAKE_CHUNK, Hub


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


def test_wait_wakes_on_a_publish_from_another_thread_and_on_close() -> None:
    async def scenario() -> None:
        hub: Hub[bytes] = Hub(max_subscribers=4)
        loop = asyncio.get_running_loop()
        sub = hub.subscribe("run", loop)
        busy = hub.subscribe("run", loop)  # never waits: takes what is there when it looks

        waiter = asyncio.ensure_future(sub.wait())
        await asyncio.sleep(0.05)
        assert not waiter.done()  # nothing published yet: it blocks (no timeout)
        threading.Thread(target=hub.publish, args=("run", b"frame-1")).start()
        await asyncio.wait_for(waiter, timeout=30)
        assert sub.take() == b"frame-1"

        hub.publish("run", b"frame-2")
        hub.publish("run", b"frame-3")
        assert busy.take() == b"frame-3" and busy.dropped == 2  # frame-1 and frame-2 replaced
        assert hub.dropped == 3  # busy's two and sub's frame-2

        await sub.wait()  # an item is there: returns at once
        assert sub.take() == b"frame-3"
        waiter = asyncio.ensure_future(sub.wait())
        await asyncio.sleep(0.05)
        assert not waiter.done()
        threading.Thread(target=hub.close_topic, args=("run",)).start()
        await asyncio.wait_for(waiter, timeout=30)
        assert sub.closed and sub.take() is None

    asyncio.run(scenario())


def test_many_waiting_subscribers_are_woken_in_chunks_that_let_other_work_in() -> None:
    """A publish to 50 waiting streams wakes them all, a chunk per loop turn: work queued on
    the loop meanwhile (a control RPC) runs before the last chunk is woken, not after."""

    async def scenario() -> None:
        hub: Hub[int] = Hub(max_subscribers=100)
        loop = asyncio.get_running_loop()
        order: list[str] = []
        subs = [hub.subscribe("run", loop) for _ in range(50)]

        async def stream(i: int) -> None:
            await subs[i].wait()
            order.append(f"s{i}")

        tasks = [asyncio.ensure_future(stream(i)) for i in range(50)]
        await asyncio.sleep(0.05)  # every stream is waiting
        thread = threading.Thread(target=hub.publish, args=("run", 1))
        thread.start()
        thread.join()
        await asyncio.sleep(0)  # the cross-thread wake-up runs: the first chunk is woken
        loop.call_soon(order.append, "rpc")  # arrives while the others still wait to be woken
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=30)
        assert sorted(order) == sorted(["rpc", *(f"s{i}" for i in range(50))])
        assert order.index("rpc") <= 2 * WAKE_CHUNK, order

    asyncio.run(scenario())
