"""The Ray backend's placement check and its reasons (pure functions over ``ray.nodes()``)."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("ray")

from trainsvc._ray_backend import _lost_reason, unplaceable_reason
from trainsvc._resources import ResourceRequest


def _node(node_id: str, alive: bool = True, **resources: float) -> dict[str, Any]:
    return {"NodeID": node_id, "Alive": alive, "Resources": {"node:127.0.0.1": 1.0, **resources}}


NODES = [
    _node("aaaa1111", CPU=0.0, memory=2.0 * 2**30),
    _node("bbbb2222", CPU=4.0, GPU=1.0, memory=8.0 * 2**30, node_a=1.0),
    _node("cccc3333", alive=False, CPU=64.0),
]


@pytest.mark.parametrize(
    "request_",
    [
        ResourceRequest(),  # one CPU
        ResourceRequest(cpus=4, gpus=1, memory_bytes=8 * 2**30),
        ResourceRequest(cpus=0.5, custom={"node_a": 1}),
    ],
)
def test_a_node_with_the_resources_places_the_run(request_: ResourceRequest) -> None:
    assert unplaceable_reason(request_, NODES) == ""


@pytest.mark.parametrize(
    ("request_", "said"),
    [
        (ResourceRequest(cpus=64), "cpus=64"),  # only a dead node has 64
        (ResourceRequest(gpus=2), "gpus=2"),
        (ResourceRequest(cpus=1, custom={"node_b": 1}), "cpus=1, node_b=1"),
        (ResourceRequest(memory_bytes=9 * 2**30), "memory_bytes=9663676416"),
    ],
)
def test_no_node_with_the_resources_says_why(request_: ResourceRequest, said: str) -> None:
    reason = unplaceable_reason(request_, NODES)
    assert reason.startswith(f"waiting for a Ray node with {said}")
    assert "node bbbb2222: CPU 4, GPU 1, memory 8.0 GiB, node_a 1" in reason
    assert "cccc3333" not in reason  # dead nodes are not offered
    assert unplaceable_reason(request_, []).count("no node alive") == 1


def test_a_dead_node_is_named_in_the_lost_reason() -> None:
    died = RuntimeError(
        "The actor died unexpectedly before finishing this task.\n\tclass_name: _WorkerActor\n"
        "The actor died because its node has died. Node Id: 421ad99e0ee493739a4d63dc"
    )
    assert _lost_reason(died) == "its Ray node 421ad99e0ee4 died"
    other = RuntimeError("The actor was\nkilled by the memory monitor")
    assert _lost_reason(other) == (
        "its Ray actor died (RuntimeError: The actor was killed by the memory monitor)"
    )


def test_an_unanswering_node_is_named_by_the_node_its_worker_reported() -> None:
    """A raylet that stops answering is often seen (the actor unavailable) before the
    cluster declares its node dead: the reason still names the node."""
    import ray

    unavailable = ray.exceptions.ActorUnavailableError("RpcError: Socket closed", b"\0" * 16)
    node = "8a23f4a693f4cf14be43771b0458dccc3e32a8fd103c94497201c686"
    assert _lost_reason(unavailable, node) == (
        "its Ray node 8a23f4a693f4 stopped answering (the actor is unavailable)"
    )
    other = RuntimeError("killed by the memory monitor")
    assert _lost_reason(other, node).startswith("its Ray actor on node 8a23f4a693f4 died (")
