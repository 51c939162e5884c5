"""The admin view (#/admin) in a real headless Chromium, against a real service whose
registry holds two versions of a model and whose trajectory store holds two windows
(one that passes the data-quality thresholds, one that fails them), through a real
bridge: the page shows the windows and the traffic split; a promote made on the page
changes the service's split; a roll-back needs the confirmation and restores the split
before; a refusal of the service shows on the page."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trainsvc_trajectories as tt
from playwright.sync_api import Page, sync_playwright
from websockets.sync.client import connect as ws_connect

from .conftest import (
    CHROMIUM_ARGS,
    BridgeProc,
    Service,
    _stop,
    chromium_path,
    free_port,
    start_bridge,
)

WINDOWING = tt.Windowing(3600)
GOOD = WINDOWING.window_id(1_800_000_000)
BAD = WINDOWING.window_id(1_800_003_600)


def _record(url: str) -> None:
    """GOOD: 2 scenarios x 2 agents with LLM calls and rewards; BAD: half of it failed."""
    with tt.TrajectoryRecorder(url) as rec:
        for s in range(2):
            for a in range(2):
                with rec.trajectory(f"agent-{a}", window_id=GOOD, scenario_id=f"s{s}") as t:
                    rec.start_step(t, {"price": 10 * s + a})
                    rec.log_llm_call(t, "trader@v1", "sys", f"price {s}{a}", "buy")
                    rec.complete_step(t, "buy", 0.5 * (s + a))
        with rec.trajectory("agent-0", window_id=BAD, scenario_id="s0") as t:
            rec.start_step(t, {"price": 1})
            rec.complete_step(t, "hold", 1.0)
        with pytest.raises(RuntimeError), rec.trajectory("agent-1", window_id=BAD) as t:
            raise RuntimeError("the agent crashed")


def _adapter(root: Path, rank: int) -> Path:
    root.mkdir()
    (root / "adapter_config.json").write_text(json.dumps({"r": rank}))
    (root / "adapter_model.safetensors").write_bytes(bytes(range(256)) * rank)
    return root


@pytest.fixture(scope="module")
def admin_service(tmp_path_factory: pytest.TempPathFactory, logs_dir: Path) -> Iterator[Service]:
    root = tmp_path_factory.mktemp("admin")
    db = f"sqlite:///{root / 'trajectories.db'}"
    _record(db)
    (root / "inputs").mkdir()
    svc = Service(
        address=f"127.0.0.1:{free_port()}",
        data_dir=root / "data",
        log=logs_dir / "admin-service.log",
        extra=("--input-dir", str(root / "inputs"), "--trajectory-db", db),
    )
    svc.start()
    with svc.client() as client:
        for rank, reward in ((4, 0.4), (8, 0.7)):
            client.models.register(
                "trader",
                str(_adapter(root / "inputs" / f"adapter-r{rank}", rank)),
                base_model="tiny-llama",
                metrics={"reward": reward, "accuracy": reward / 2},
                windows=[GOOD],
                reason="trained",
            )
        client.models.promote("trader", 1, reason="first")
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def admin_bridge(admin_service: Service, logs_dir: Path) -> Iterator[BridgeProc]:
    b = start_bridge(admin_service.address, logs_dir / "admin-bridge.log")
    yield b
    _stop(b.proc)


def _traffic(service: Service) -> dict[int, float]:
    with service.client() as client:
        (model,) = client.models.list()
        return {v: round(s, 6) for v, s in model.deployment.traffic.items()}


def _share(page: Page, version: int) -> str:
    return page.text_content(f'#models tr[data-version="{version}"] .share-text') or ""


def test_admin_view_shows_quality_and_traffic_and_promotes_and_rolls_back(
    admin_bridge: BridgeProc, admin_service: Service, artifacts_dir: Path
) -> None:
    errors: list[str] = []
    dialogs: list[Any] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1400})
            page.set_default_timeout(30_000)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("dialog", lambda d: dialogs.append(d))  # no native confirm() is used
            page.goto(admin_bridge.url + "#/admin")
            page.wait_for_selector("#admin-view:not([hidden])")
            assert page.is_hidden("#runs-view")

            # Data quality per window, the failing one highlighted with its reasons.
            page.wait_for_selector(f'#windows tr[data-window="{BAD}"]')
            assert page.locator("#windows tr[data-window]").count() == 2
            good = f'#windows tr[data-window="{GOOD}"]'
            bad = f'#windows tr[data-window="{BAD}"]'
            assert page.get_attribute(good, "class") == "window-ok"
            assert page.get_attribute(bad, "class") == "window-failing"
            assert "complete_fraction" in (page.text_content(f"{bad} .failures") or "")
            assert page.text_content(f"{good} .score") == "1"
            # Collected over time: a chart of the 6 trajectories.
            assert page.get_attribute("#traj-chart", "data-total") == "6"
            assert page.locator("#traj-chart canvas").count() >= 1

            # The versions table with the split, and the versions compared.
            page.wait_for_selector('#models .model[data-model="trader"] tr[data-version="2"]')
            assert (_share(page, 1), _share(page, 2)) == ("100%", "0%")
            assert (
                page.locator('#compare .compare-metric[data-metric="reward"] .compare-row').count()
                == 2
            )
            assert (
                page.text_content(
                    '#compare .compare-metric[data-metric="reward"] '
                    '.compare-row[data-version="2"] .compare-value'
                )
                == "0.7"
            )

            # Promote v2 to 25 % from the page: the service's split changes.
            page.fill('#models tr[data-version="2"] input.fraction', "0.25")
            page.click('#models tr[data-version="2"] .promote-button')
            page.wait_for_function(
                "() => document.querySelector('#models tr[data-version=\"2\"] .share-text')"
                "?.textContent === '25%'"
            )
            assert _traffic(admin_service) == {1: 0.75, 2: 0.25}
            assert _share(page, 1) == "75%"
            page.wait_for_selector('#model-events .model-event[data-type="promoted"]')

            # Roll back: cancelling the confirmation changes nothing...
            page.click('#models .rollback[data-model="trader"]')
            page.wait_for_selector("#rollback-dialog[open]")
            assert "v1 75% · v2 25%" in (page.text_content("#rollback-from") or "")
            page.click("#rollback-cancel")
            page.wait_for_timeout(500)
            assert _traffic(admin_service) == {1: 0.75, 2: 0.25}
            # ...confirming restores the split before the promote.
            page.click('#models .rollback[data-model="trader"]')
            page.fill("#rollback-reason", "canary regressed")
            page.click("#rollback-confirm")
            page.wait_for_function(
                "() => document.querySelector('#models tr[data-version=\"1\"] .share-text')"
                "?.textContent === '100%'"
            )
            assert _traffic(admin_service) == {1: 1.0}
            newest = page.locator("#model-events .model-event").first
            newest.wait_for()
            page.wait_for_function(
                "() => document.querySelector('#model-events .model-event')?.dataset.type"
                " === 'rolled_back'"
            )
            assert "canary regressed" in (newest.text_content() or "")

            # Nothing left to roll back to: the service's refusal shows on the page.
            page.click('#models .rollback[data-model="trader"]')
            page.click("#rollback-confirm")
            page.wait_for_selector("#admin-error:not([hidden])")
            assert page.get_attribute("#admin-error", "data-code") == "FAILED_PRECONDITION"
            assert _traffic(admin_service) == {1: 1.0}

            shot = artifacts_dir / "dashboard-admin.png"
            page.screenshot(path=str(shot), full_page=True)
            print(f"screenshot: {shot}")
        finally:
            browser.close()
    assert dialogs == [] and errors == []
    assert shot.stat().st_size > 10_000


def test_the_client_reads_the_windows(admin_service: Service) -> None:
    with admin_service.client() as client:
        windows = list(client.trajectories.list_windows(page_size=1))
    assert [w.window_id for w in windows] == [BAD, GOOD]
    assert [w.passed for w in windows] == [False, True]


def _next(ws: Any, kind: str) -> dict[str, Any]:
    """The next text message of type `kind` (others skipped)."""
    while True:
        msg = ws.recv(timeout=30)
        if isinstance(msg, str) and (data := json.loads(msg))["type"] == kind:
            return dict(data)


def test_admin_protocol_checks_its_messages(
    admin_bridge: BridgeProc, admin_service: Service
) -> None:
    before = _traffic(admin_service)
    with ws_connect(admin_bridge.ws_url) as ws:
        ws.send(json.dumps({"type": "admin", "on": "yes"}))
        assert _next(ws, "error")["message"].startswith("on: true or false expected")
        ws.send(json.dumps({"type": "admin", "on": True}))
        data = _next(ws, "admin")
        assert [w["id"] for w in data["trajectories"]["windows"]] == [BAD, GOOD]
        assert data["models"][0]["model"] == "trader" and data["models_error"] is None
        assert [e["sequence"] for e in data["events"]] == sorted(
            (e["sequence"] for e in data["events"]), reverse=True
        )
        bad = [
            ({"model": "trader", "version": 2, "fraction": 1.5}, "fraction"),
            ({"model": "trader", "version": 0, "fraction": 0.5}, "version"),
            ({"model": "trader", "version": True, "fraction": 0.5}, "version"),
            ({"version": 2, "fraction": 0.5}, "model"),
            ({"model": "trader", "version": 2, "fraction": 0.5, "reason": 7}, "reason"),
        ]
        for req, (fields, field) in enumerate(bad, start=1):
            ws.send(json.dumps({"type": "promote", "req": req, **fields}))
            reply = _next(ws, "reply")
            assert reply["req"] == req and not reply["ok"]
            assert reply["error"]["code"] == "INVALID_ARGUMENT"
            assert reply["error"]["message"].startswith(f"{field}:")
        # The service's own refusal comes back with its status.
        ws.send(
            json.dumps(
                {"type": "promote", "req": 9, "model": "trader", "version": 7, "fraction": 1}
            )
        )
        reply = _next(ws, "reply")
        assert reply["req"] == 9 and reply["error"]["code"] == "NOT_FOUND"
    assert _traffic(admin_service) == before


# A GRPO run on the smallest shipped task (as tests/service/test_grpo.py runs it).
GRPO_SMALL = {
    "task": "increment4",
    "group_size": 4,
    "prompts_per_step": 4,
    "sample_interval": 2,
    "eval_interval": 3,
    "data.eval_prompts": 16,
    "model.hidden_size": 32,
    "model.num_layers": 1,
    "model.num_heads": 2,
}


def test_a_grpo_run_shows_its_reward_curve(
    admin_bridge: BridgeProc, admin_service: Service, artifacts_dir: Path
) -> None:
    with admin_service.client() as client:
        run = client.create_run(
            "grpo", step_budget=1_000_000, seed=3, config=GRPO_SMALL, display_name="admin grpo"
        )
        try:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
                try:
                    page = browser.new_page(viewport={"width": 1440, "height": 1400})
                    page.set_default_timeout(120_000)
                    page.goto(admin_bridge.url + "#/admin")
                    row = f'#training-runs tr[data-run="{run.name}"]'
                    page.click(f"{row} button")
                    page.wait_for_selector(f"{row}.selected")
                    # The run's reward curve, from the frames the bridge streams.
                    page.wait_for_selector('#reward-charts .chart[data-metric="reward_mean"]')
                    assert "admin grpo" in (page.text_content("#curves-title") or "")
                    # Only the training curves: no throughput or learning-rate charts.
                    shown = page.eval_on_selector_all(
                        "#reward-charts .chart", "(cs) => cs.map((c) => c.dataset.metric)"
                    )
                    assert all(re.search("reward|loss|kl|clip", m) for m in shown), shown
                    page.wait_for_timeout(1500)  # a few more points on the curves
                    page.screenshot(path=str(artifacts_dir / "dashboard-admin-grpo.png"))
                finally:
                    browser.close()
        finally:
            client.stop_run(run.name)


def test_without_a_trajectory_store_the_view_says_so(tmp_path: Path, logs_dir: Path) -> None:
    svc = Service(
        address=f"127.0.0.1:{free_port()}",
        data_dir=tmp_path / "data",
        log=logs_dir / "admin-nostore-service.log",
    )
    svc.start()
    try:
        bridge = start_bridge(svc.address, logs_dir / "admin-nostore-bridge.log")
        try:
            with ws_connect(bridge.ws_url) as ws:
                ws.send(json.dumps({"type": "admin", "on": True}))
                data = _next(ws, "admin")
        finally:
            _stop(bridge.proc)
    finally:
        svc.stop()
    assert data["trajectories"] is None
    assert data["trajectories_error"]["code"] == "FAILED_PRECONDITION"
    assert "--trajectory-db" in data["trajectories_error"]["message"]
    assert data["models"] == [] and data["models_error"] is None and data["events"] == []
