"""Fuzzing the request validators with hypothesis (issue 24).

Random and hostile requests go through what the servicer runs before any work:
``spec_from_request``, ``page_args``, ``state_filter`` and the name parsers.
Each either returns or raises ``InvalidArgumentError`` naming a field, with a
message short enough for a gRPC status (never another exception: that would
be INTERNAL). The normal suite runs a few hundred derandomized examples;
``make fuzz`` runs fresh ones for ``FUZZ_SECONDS``.
"""

from __future__ import annotations

import base64
import collections
import json
import os
import time
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trainsvc import _convert as conv
from trainsvc._domain import (
    InvalidArgumentError,
    parse_checkpoint_id,
    parse_checkpoint_name,
    parse_run_name,
)
from trainsvc._errors import status_of
from trainsvc_api.v1 import trainsvc_pb2 as pb

FUZZ_SECONDS = float(os.environ.get("FUZZ_SECONDS", "0") or 0)
STATS: collections.Counter[str] = collections.Counter()

NASTY_TEXT = [
    "",
    "ab\n",
    "runs/ab\n",
    "runs/a/checkpoints/step_1\n",
    "runs/a/checkpoints/../../x",
    "/etc/passwd",
    "NaN",
    "Infinity",
    "-Infinity",
    "1e999",
    "1" * 5000,
    "[" * 5000 + "]" * 5000,
    '{"a":' * 3000 + "1" + "}" * 3000,
    '"\\ud800"',
    "\x00",
    "step_" + "9" * 30,
    "x" * 100_000,
]
text = st.one_of(st.text(max_size=64), st.sampled_from(NASTY_TEXT))
json_ish = st.one_of(
    st.sampled_from(NASTY_TEXT),
    st.recursive(
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(),
            st.floats(allow_nan=False, allow_infinity=False),
            st.text(max_size=8),
        ),
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
        ),
        max_leaves=8,
    ).map(json.dumps),
)


@st.composite
def create_requests(draw: Any) -> pb.CreateRunRequest:
    kind = draw(st.sampled_from([0, 1, 2, 3, 99]))
    run = pb.Run(
        kind=kind,  # type: ignore[arg-type]
        step_budget=draw(st.integers(-(2**63), 2**63 - 1)),
        seed=draw(st.integers(0, 2**64 - 1)),
        display_name=draw(text),
    )
    policy = run.checkpoint_policy
    policy.interval_steps = draw(st.integers(-(2**63), 2**63 - 1))
    policy.keep_last = draw(st.integers(-(2**31), 2**31 - 1))
    policy.keep_every = draw(st.integers(-(2**63), 2**63 - 1))
    policy.compress = draw(st.booleans())
    if draw(st.booleans()):
        run.max_restarts = draw(st.integers(-(2**31), 2**31 - 1))
    config = draw(st.sampled_from(["emergence", "othello", "lora", None]))
    if config is not None:
        overrides = getattr(run, config).overrides
        for key in draw(st.lists(text, max_size=3)):
            overrides[key] = draw(json_ish)
    return pb.CreateRunRequest(run=run, run_id=draw(text), resume_from=draw(text))


def _short_invalid_argument(call: Callable[[], Any]) -> None:
    STATS["trials"] += 1
    try:
        call()
    except InvalidArgumentError as exc:
        status = status_of(exc)
        assert exc.field and len(status.details) <= 2100, (exc.field, len(status.details))
        legacy = [v for k, v in status.trailing_metadata if k == "trainsvc-field"]
        assert len(legacy) == 1 and len(legacy[0]) <= 400 and legacy[0].isascii(), legacy
        rich = [v for k, v in status.trailing_metadata if k == "grpc-status-details-bin"]
        assert len(rich) == 1 and len(rich[0]) <= 2 * 400 + 200, len(rich[0])
        STATS["refused: INVALID_ARGUMENT"] += 1
        return
    STATS["accepted"] += 1


def _check(req: pb.CreateRunRequest, page: pb.ListRunsRequest, name: str, state: int) -> None:
    _short_invalid_argument(lambda: conv.spec_from_request(req))
    _short_invalid_argument(lambda: conv.page_args(page))
    _short_invalid_argument(lambda: conv.state_filter(state))
    _short_invalid_argument(lambda: parse_run_name(name))
    _short_invalid_argument(lambda: parse_checkpoint_id(name, "checkpoint"))
    _short_invalid_argument(lambda: parse_checkpoint_name(name, "resume_from"))


page_tokens = st.one_of(
    text,
    st.sampled_from(NASTY_TEXT).map(lambda t: base64.urlsafe_b64encode(t.encode()).decode()),
    json_ish.map(lambda t: base64.urlsafe_b64encode(t.encode()).decode()),
)


def _fuzz(**kwargs: Any) -> None:
    @settings(deadline=None, database=None, suppress_health_check=list(HealthCheck), **kwargs)
    @given(
        create_requests(),
        st.builds(
            pb.ListRunsRequest,
            page_size=st.integers(-(2**31), 2**31 - 1),
            page_token=page_tokens,
        ),
        text,
        st.integers(-5, 20),
    )
    def fuzz_one(req: pb.CreateRunRequest, page: pb.ListRunsRequest, name: str, state: int) -> None:
        _check(req, page, name, state)

    fuzz_one()


def test_fuzz_the_validators_briefly() -> None:
    _fuzz(max_examples=200, derandomize=True)


@pytest.mark.skipif(FUZZ_SECONDS <= 0, reason="make fuzz sets FUZZ_SECONDS")
def test_fuzz_the_validators_for_a_while() -> None:
    STATS.clear()
    end = time.monotonic() + FUZZ_SECONDS
    while time.monotonic() < end:
        _fuzz(max_examples=200)
    print(f"\nrequest validator fuzz: {FUZZ_SECONDS:.0f} s")
    print("| probe | trials | good outcomes | failures |")
    print("| --- | --- | --- | --- |")
    print(f"| hostile requests (validators) | {STATS['trials']} | {STATS['trials']} | 0 |")
    for key, count in sorted(STATS.items()):
        if key != "trials":
            print(f"|   {key} | {count} | | |")
