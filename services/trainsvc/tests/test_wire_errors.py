"""Wire errors carry google.rpc.Status details any gRPC client can read (and the old trailer).

A real `trainsvc serve` on loopback; the first tests use raw gRPC stubs and
`grpc_status.rpc_status` only (what a Go or grpcurl client sees), the last the
typed Python client.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2
from grpc_status import rpc_status
from trainsvc_api.v1 import trainsvc_pb2 as pb
from trainsvc_api.v1 import trainsvc_pb2_grpc as pb_grpc


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _serve(data: Path, *flags: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """A real `trainsvc serve` on loopback; yields its address."""
    address = f"127.0.0.1:{_free_port()}"
    log = (data / "service.log").open("wb")
    proc = subprocess.Popen(
        [
            *(sys.executable, "-c", "from trainsvc import main; main()", "serve"),
            *("--listen", address, "--data-dir", str(data / "data"), "--metrics-listen", ""),
            *("--log-format", "json", *flags),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    try:
        with grpc.insecure_channel(address) as channel:
            grpc.channel_ready_future(channel).result(timeout=60)
        yield address
    finally:
        proc.terminate()
        proc.wait(60)
        log.close()


@pytest.fixture(scope="module")
def address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A service that allows one stream at a time (so the cap is easy to reach)."""
    with _serve(tmp_path_factory.mktemp("wire-errors"), "--max-streams", "1") as address:
        yield address


@pytest.fixture
def stub(address: str) -> Iterator[pb_grpc.TrainServiceStub]:
    with grpc.insecure_channel(address) as channel:
        yield pb_grpc.TrainServiceStub(channel)


def _violations(err: grpc.RpcError) -> list[tuple[str, str]]:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None, "no google.rpc.Status in the trailers"
    assert status.code == code_pb2.INVALID_ARGUMENT
    assert status.message == err.details()  # type: ignore[attr-defined]
    out = []
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        assert detail.Unpack(bad), detail.type_url
        out += [(v.field, v.description) for v in bad.field_violations]
    return out


def test_a_bad_field_is_a_bad_request_field_violation(stub: pb_grpc.TrainServiceStub) -> None:
    request = pb.CreateRunRequest(run=pb.Run(kind=pb.Run.EMERGENCE, step_budget=0))
    with pytest.raises(grpc.RpcError) as info:
        stub.CreateRun(request, timeout=30)
    err = info.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    ((field, description),) = _violations(err)
    assert field == "run.step_budget"
    assert description and "run.step_budget" not in description  # the field is not repeated
    # Clients from before the rich details still find the field in the old trailer.
    trailing = dict(err.trailing_metadata())  # type: ignore[attr-defined]
    assert trailing["trainsvc-field"] == "run.step_budget"


def test_a_huge_bad_value_gives_short_details(stub: pb_grpc.TrainServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.GetRun(pb.GetRunRequest(name="runs/" + "x" * 1_000_000), timeout=30)
    err = info.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    ((field, description),) = _violations(err)
    assert field == "name"
    assert len(description) < 1000


def test_the_stream_cap_is_resource_exhausted_with_a_quota_failure(
    stub: pb_grpc.TrainServiceStub,
) -> None:
    held = stub.StreamEvents(pb.StreamEventsRequest(name="runs/-", follow=True))
    try:
        # The first stream holds the one slot once the server has started it. A held
        # stream that ended (it may start while a second one still has the slot, and be
        # refused) is opened again.
        deadline = time.monotonic() + 30
        while True:
            if held.done():
                held = stub.StreamEvents(pb.StreamEventsRequest(name="runs/-", follow=True))
                time.sleep(0.1)
            second = stub.StreamEvents(pb.StreamEventsRequest(name="runs/-"), timeout=30)
            try:
                list(second)
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:  # type: ignore[attr-defined]
                    err = exc
                    break
                raise
            assert time.monotonic() < deadline, (
                f"the cap of one stream was never reached (held stream: {held!r})"
            )
            time.sleep(0.1)
        status = rpc_status.from_call(err)  # type: ignore[arg-type]
        assert status is not None and status.code == code_pb2.RESOURCE_EXHAUSTED
        (detail,) = status.details
        quota = error_details_pb2.QuotaFailure()
        assert detail.Unpack(quota)
        assert [v.subject for v in quota.violations] == ["streams"]
        assert "max 1" in quota.violations[0].description
    finally:
        held.cancel()


def test_the_python_client_raises_typed_errors_from_the_details(address: str) -> None:
    from trainsvc_client import InvalidArgumentError, ResourceExhaustedError, connect

    with connect(address) as client:
        with pytest.raises(InvalidArgumentError) as bad:
            client.create_run("emergence", step_budget=-1)
        assert bad.value.field == "run.step_budget"
        assert [v.field for v in bad.value.field_violations] == ["run.step_budget"]
        held = client.stream_events("runs/-", follow=True)
        it = iter(held)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    list(client.stream_events("runs/-"))
                except ResourceExhaustedError as exc:
                    assert [q.subject for q in exc.quota_violations] == ["streams"]
                    break
                assert time.monotonic() < deadline
                time.sleep(0.1)
        finally:
            held.cancel()
            assert list(it) == []


def test_the_asyncio_client_raises_the_same_typed_errors(address: str) -> None:
    import asyncio

    from trainsvc_client import InvalidArgumentError, NotFoundError, ResourceExhaustedError, aio

    async def main() -> None:
        async with aio.connect(address, timeout=30) as client:
            with pytest.raises(InvalidArgumentError) as bad:
                await client.create_run("emergence", step_budget=0)
            assert bad.value.field == "run.step_budget"
            assert bad.value.field_violations[0].description.startswith("must be")
            with pytest.raises(NotFoundError):
                await client.get_run("no-such-run")
            assert [r async for r in client.list_runs()] == []
            held = client.stream_events("runs/-", follow=True)

            async def hold() -> None:
                async for _ in held:
                    pass

            holder = asyncio.create_task(hold())
            try:
                for _ in range(300):
                    try:
                        async for _ in client.stream_events("runs/-"):
                            pass
                    except ResourceExhaustedError as exc:
                        assert exc.quota_violations[0].subject == "streams"
                        break
                    await asyncio.sleep(0.1)
                else:
                    raise AssertionError("the cap of one stream was never reached")
            finally:
                # Cancelling the task that iterates ends the call: a cancellation, not an error.
                holder.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await holder
            # The slot is free again once the service has seen the cancellation.
            for _ in range(300):
                try:
                    assert [e async for e in client.stream_events("runs/-")] == []
                    break
                except ResourceExhaustedError:
                    await asyncio.sleep(0.1)
            else:
                raise AssertionError("the cancelled stream kept its slot")

    asyncio.run(main())


def test_the_asyncio_client_sends_the_token_of_its_config(tmp_path: Path) -> None:
    import asyncio

    from trainsvc_client import ServiceConfig, UnauthenticatedError, aio

    token = "s3cret-token"
    with _serve(tmp_path, env={"TRAINSVC_TOKEN": token}) as address:

        async def main() -> None:
            async with aio.connect_config(ServiceConfig(address, token, keepalive_s=10)) as client:
                assert (await client.list_runs_page()).runs == []
            async with aio.connect(address, "wrong") as client:
                with pytest.raises(UnauthenticatedError):
                    await client.list_runs_page()

        asyncio.run(main())
