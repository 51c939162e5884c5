"""The bridge with many real WebSocket clients, auth, and bad messages."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from trainsvc_client import pb
from trainsvc_dashboard import PAYLOAD_EMERGENCE, decode_frame
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from .conftest import TINY_CONFIG, BridgeProc, Service, _stop, start_bridge, wait_for

READERS = 20
READER_RATE_HZ = 5.0
OUTBOX_LIMIT = 256


def _stats(bridge: BridgeProc, token: str = "") -> dict[str, Any]:
    url = bridge.url + "api/stats" + (f"?token={token}" if token else "")
    with urllib.request.urlopen(url, timeout=30) as resp:
        return dict(json.loads(resp.read()))


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def _text(ws: ClientConnection, kind: str) -> dict[str, Any]:
    """The next text message of type `kind` (frames and other messages skipped)."""
    while True:
        msg = await asyncio.wait_for(ws.recv(), 60)
        if isinstance(msg, str) and (data := json.loads(msg))["type"] == kind:
            return dict(data)


class Reader:
    """A client that reads everything and counts frames after it set its rate."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.frames = 0
        self.steps: list[int] = []
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for msg in self.ws:
            if isinstance(msg, bytes):
                frame = decode_frame(msg)
                assert frame.kind == PAYLOAD_EMERGENCE
                self.frames += 1
                self.steps.append(frame.step)


async def _fan_out(bridge: BridgeProc) -> None:
    # The stuck client: asks for everything, then never reads again.
    stuck = await connect(bridge.ws_url, max_queue=1)
    await stuck.send(json.dumps({"type": "rate", "hz": 60}))
    readers = []
    for _ in range(READERS):
        ws = await connect(bridge.ws_url)
        await ws.send(json.dumps({"type": "rate", "hz": READER_RATE_HZ}))
        readers.append(Reader(ws))
    rss_before = _rss_kib(bridge.pid)
    start = time.monotonic()

    # Flood: past its message budget (issue 24, item 13) the bridge drops the stuck
    # client's messages; within it, each bad message earns an error reply the stuck
    # client never reads. Either way the flood costs the bridge little.
    flood = json.dumps({"type": "rate", "hz": 1e9})
    sent = 0
    while sent < 400_000:
        for _ in range(2000):
            await stuck.send(flood)
        sent += 2000
        stats = await asyncio.to_thread(_stats, bridge)
        if any(c["dropped"] > 0 or c["messages_dropped"] > 0 for c in stats["clients"]):
            break
    stats = await asyncio.to_thread(_stats, bridge)
    assert any(c["dropped"] > 0 or c["messages_dropped"] > 0 for c in stats["clients"]), (
        "the flood was neither limited nor backed up"
    )
    assert all(c["outbox"] <= OUTBOX_LIMIT for c in stats["clients"]), stats

    # While it stays stuck, every other client keeps getting new frames.
    marks = [r.frames for r in readers]
    for reader, mark in zip(readers, marks, strict=True):
        await asyncio.to_thread(
            wait_for, "frames to a reading client", lambda r=reader, m=mark: r.frames >= m + 5
        )
    elapsed = time.monotonic() - start
    for reader in readers:
        # Newest-wins at the asked rate: never more frames than the rate allows
        # (+2 for the frames before the rate message took effect).
        assert reader.frames <= READER_RATE_HZ * (elapsed + 1) * 1.25 + 2, (reader.frames, elapsed)
        assert reader.steps == sorted(reader.steps)
    stats = await asyncio.to_thread(_stats, bridge)
    assert all(c["outbox"] <= OUTBOX_LIMIT for c in stats["clients"]), stats
    grown_mib = (_rss_kib(bridge.pid) - rss_before) / 1024
    replies_mib = sent * 60 / 2**20
    print(
        f"flood: {sent} messages (~{replies_mib:.0f} MiB of replies); bridge RSS grew {grown_mib:.1f} MiB"
    )
    assert grown_mib < 64

    for reader in readers:
        await reader.ws.close()
        reader.task.cancel()
    stuck.transport.abort()


def test_a_client_that_does_not_read_holds_back_no_one(bridge: BridgeProc, live_run: str) -> None:
    asyncio.run(_fan_out(bridge))


async def _protocol(bridge: BridgeProc, live_run: str) -> None:
    async with connect(bridge.ws_url) as ws:
        hello = await _text(ws, "hello")
        assert hello["protocol"] == 1
        assert {p["id"] for p in hello["presets"]} >= {"emergence-tiny"}
        assert hello["service"]["state"] == "connected"
        selected = await _text(ws, "selected")
        assert selected["auto"] is True

        await ws.send(json.dumps({"type": "rate", "hz": 500}))
        assert "hz" in (await _text(ws, "error"))["message"]
        await ws.send(json.dumps({"type": "bogus"}))
        assert "allowed: select" in (await _text(ws, "error"))["message"]
        await ws.send("not json")
        assert "JSON" in (await _text(ws, "error"))["message"]

        # Controls reach the service and come back with its status codes.
        await ws.send(json.dumps({"type": "pause", "run": "runs/no-such-run", "req": 7}))
        reply = await _text(ws, "reply")
        assert (reply["req"], reply["ok"], reply["error"]["code"]) == (7, False, "NOT_FOUND")
        await ws.send(json.dumps({"type": "create", "preset": "nope", "req": 8}))
        reply = await _text(ws, "reply")
        assert reply["ok"] is False and "preset" in reply["error"]["message"]

        # Selecting a run explicitly sends its backlog, then its frames.
        await ws.send(json.dumps({"type": "select", "run": live_run.removeprefix("runs/")}))
        selected = await _text(ws, "selected")
        assert (selected["run"], selected["auto"]) == (live_run, False)
        assert (await _text(ws, "events"))["events"][0]["type"] == "STATE_CHANGED"
        while not isinstance(msg := await asyncio.wait_for(ws.recv(), 60), bytes):
            pass
        assert decode_frame(msg).feed == selected["feed"]


def test_protocol_messages_and_errors(bridge: BridgeProc, live_run: str) -> None:
    asyncio.run(_protocol(bridge, live_run))


async def _auth(bridge: BridgeProc) -> None:
    ws_url = bridge.ws_url
    for url in (ws_url, ws_url + "?token=wrong"):
        with pytest.raises(InvalidStatus) as err:
            await connect(url)
        assert err.value.response.status_code == 401
    with pytest.raises(InvalidStatus) as err:
        await connect(ws_url + "?token=s3cret", origin="http://evil.example")  # type: ignore[arg-type]
    assert err.value.response.status_code == 403
    async with connect(ws_url + "?token=s3cret") as ws:
        assert (await _text(ws, "hello"))["protocol"] == 1
    async with connect(ws_url, additional_headers={"Authorization": "Bearer s3cret"}) as ws:
        assert (await _text(ws, "hello"))["protocol"] == 1


def test_wrong_login_token_is_refused(service: Service, logs_dir: Path) -> None:
    guarded = start_bridge(service.address, logs_dir / "bridge-auth.log", "--login-token", "s3cret")
    try:
        with urllib.request.urlopen(guarded.url + "api/info", timeout=30) as resp:
            assert json.loads(resp.read())["auth_required"] is True
        asyncio.run(_auth(guarded))
    finally:
        _stop(guarded.proc)


async def _rebinding(bridge: BridgeProc) -> None:
    # Issue 24, item 4: a page on evil.example rebound to 127.0.0.1 sent
    # "Host: evil.example:PORT" with a matching Origin, and its `stop` reached the
    # service. The Host must name the bridge.
    port = int(bridge.url.rsplit(":", 1)[1].strip("/"))

    def via(name: str) -> Any:
        """Connect to the bridge's socket with ``name`` in the URL, so in Host and Origin."""
        return connect(
            f"ws://{name}:{port}/ws",
            host="127.0.0.1",
            port=port,
            origin=f"http://{name}:{port}",  # type: ignore[arg-type]
        )

    with pytest.raises(InvalidStatus) as err:
        await via("evil.example")
    assert err.value.response.status_code == 403
    with pytest.raises(InvalidStatus) as err:  # two Host headers
        await connect(bridge.ws_url, additional_headers={"Host": f"127.0.0.1:{port}"})
    assert err.value.response.status_code == 403
    for name in ("localhost", "127.0.0.1", "app.localhost"):
        async with via(name) as ws:
            assert (await _text(ws, "hello"))["protocol"] == 1


def test_a_foreign_host_header_is_refused(bridge: BridgeProc) -> None:
    asyncio.run(_rebinding(bridge))
    request = urllib.request.Request(bridge.url + "api/stats", headers={"Host": "evil.example"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=30)
    assert err.value.code == 403
    err.value.close()


def test_host_allowed_rules() -> None:
    from trainsvc_dashboard._server import host_allowed

    names = frozenset({"dash.lan"})
    for header in ("127.0.0.1:5173", "[::1]:5173", "localhost", "a.localhost:1", "dash.lan:80"):
        assert host_allowed(header, "127.0.0.1", names), header
    assert host_allowed("box.example:5173", "box.example", frozenset())
    for header in ("", "evil.example:5173", "127.0.0.1.evil.example", "localhost.evil:1"):
        assert not host_allowed(header, "127.0.0.1", names), header


async def _hostile_messages(bridge: BridgeProc, live_run: str) -> None:
    # Issue 24, item 13: 2,000 selects opened 2,003 upstream feeds; a 30k-deep JSON
    # message closed the connection without an error; `req: NaN` got no reply.
    async with connect(bridge.ws_url, max_size=None) as ws:
        await _text(ws, "hello")
        await ws.send('{"type":"select","run":' + "[" * 30_000 + "]" * 30_000 + "}")
        assert "nested deeper" in (await _text(ws, "error"))["message"]
        await ws.send('{"type":"pause","run":"runs/x","req":NaN}')
        assert "not JSON" in (await _text(ws, "error"))["message"]
        await ws.send('{"type":"pause","run":"runs/x","req":[1]}')
        reply = await _text(ws, "reply")
        assert reply["ok"] is False and reply["req"] is None and "req:" in reply["error"]["message"]
        await ws.send(json.dumps({"type": "select", "run": "runs/no-such-run"}))
        assert "no such run" in (await _text(ws, "error"))["message"]
        feeds_before = len((await asyncio.to_thread(_stats, bridge))["feeds"])
        for i in range(2000):
            run = live_run if i % 2 else f"runs/made-up-{i}"
            await ws.send(json.dumps({"type": "select", "run": run}))
        notice = await _text(ws, "error")
        while not notice["message"].startswith("rate:"):
            notice = await _text(ws, "error")
        stats = await asyncio.to_thread(_stats, bridge)
        assert len(stats["feeds"]) <= max(feeds_before, 1) + 1, stats["feeds"]
        await asyncio.sleep(2.5)  # the budget refills: the client is served again
        await ws.send(json.dumps({"type": "select", "run": live_run}))
        assert (await _text(ws, "selected"))["run"] == live_run


def test_hostile_messages_get_an_error_and_open_no_feeds(bridge: BridgeProc, live_run: str) -> None:
    asyncio.run(_hostile_messages(bridge, live_run))


async def _finished_history(bridge: BridgeProc, run: str, last_step: int) -> None:
    async with connect(bridge.ws_url) as ws:
        await ws.send(json.dumps({"type": "select", "run": run}))
        while True:
            history = await _text(ws, "history")
            if history["run"] == run and history["steps"]:
                break
        assert history["steps"][0] <= 2 and history["steps"][-1] == last_step
        assert history["steps"] == sorted(history["steps"])
        assert all(len(v) == len(history["steps"]) for v in history["metrics"].values())


def test_a_run_that_finished_before_anyone_watched_has_its_curves(
    bridge: BridgeProc, service: Service
) -> None:
    with service.client() as client:
        run = client.create_run("emergence", step_budget=30, seed=3, config=TINY_CONFIG)
        wait_for(
            "the run to complete",
            lambda: client.get_run(run.name).state == pb.Run.COMPLETED,
            timeout=180,
        )
    asyncio.run(_finished_history(bridge, run.name, 30))
