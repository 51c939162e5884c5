"""The bridge survives a service restart and tells its clients (the page included)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from playwright.sync_api import sync_playwright
from websockets.asyncio.client import connect

from .conftest import (
    CHROMIUM_ARGS,
    BridgeProc,
    Service,
    _stop,
    chromium_path,
    free_port,
    start_bridge,
)
from .test_bridge import _text


async def _restart(service: Service, bridge: BridgeProc) -> None:
    async with connect(bridge.ws_url) as ws:
        hello = await _text(ws, "hello")
        assert hello["service"]["state"] == "connected"

        await asyncio.to_thread(service.stop)
        down = await _text(ws, "service")
        assert down["state"] == "disconnected"
        assert down["address"] == service.address

        await asyncio.to_thread(service.start)
        up = await _text(ws, "service")
        assert up["state"] == "connected"

        # Calls go through again: a control reaches the new service process.
        await ws.send(json.dumps({"type": "resume", "run": "runs/missing", "req": 1}))
        reply = await _text(ws, "reply")
        assert reply["error"]["code"] == "NOT_FOUND"


def _page_shows_the_outage(service: Service, bridge: BridgeProc) -> None:
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(60_000)
            page.goto(bridge.url)
            page.wait_for_selector('#conn[data-state="live"]')
            service.stop()
            page.wait_for_selector('#conn[data-state="service-down"]')
            assert service.address in page.inner_text("#banner")
            service.start()
            page.wait_for_selector('#conn[data-state="live"]')
            assert not page.is_visible("#banner")
        finally:
            browser.close()


def test_bridge_reconnects_after_a_service_restart(tmp_path: Path, logs_dir: Path) -> None:
    service = Service(
        address=f"127.0.0.1:{free_port()}",
        data_dir=tmp_path / "data",
        log=logs_dir / "svc-restart.log",
    )
    service.start()
    bridge = start_bridge(service.address, logs_dir / "bridge-restart.log")
    try:
        _page_shows_the_outage(service, bridge)
        asyncio.run(_restart(service, bridge))
    finally:
        _stop(bridge.proc)
        service.stop()
