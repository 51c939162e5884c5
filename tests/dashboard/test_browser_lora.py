"""The page's lm view in a real headless Chromium: a real lora run on a tiny model, a real bridge."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import sync_playwright
from trainsvc_client import pb

from .conftest import (
    CHROMIUM_ARGS,
    BridgeProc,
    Service,
    _stop,
    chromium_path,
    free_port,
    start_bridge,
    wait_for,
)

# Sampled instead of a validation prompt: markup that must show as text, never as HTML.
PROMPT = "<b>weather</b> in <i>Riga</i> & co"
LOSS_CHART = '#charts .chart[data-metric="train/val loss"]'
# Saturated pixels (a series' line; grid and labels are grey) on one chart's canvas.
LINE_PIXELS = """(sel) => {
  const c = document.querySelector(sel + ' canvas');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 0; i < d.length; i += 4)
    if (d[i + 3] > 200 && Math.max(d[i], d[i + 1], d[i + 2]) - Math.min(d[i], d[i + 1], d[i + 2]) > 80) n++;
  return n;
}"""


@pytest.fixture(scope="module")
def lm_service(
    lm_inputs: Any, tmp_path_factory: pytest.TempPathFactory, logs_dir: Path
) -> Iterator[Service]:
    svc = Service(
        address=f"127.0.0.1:{free_port()}",
        data_dir=tmp_path_factory.mktemp("trainsvc-lm-data"),
        log=logs_dir / "lm-service.log",
        extra=("--input-dir", str(lm_inputs.root)),
    )
    svc.start()
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def lm_run(lm_service: Service, lm_inputs: Any) -> Iterator[str]:
    """A real lora run, RUNNING, with a sample completion every 5 steps."""
    with lm_service.client() as client:
        run = client.create_run(
            "lora",
            step_budget=1_000_000,
            seed=2,
            # A constant learning rate after the warm-up: its chart must still draw a line.
            config=lm_inputs.config(**{"log.sample_prompt": PROMPT, "optim.min_lr_ratio": 1.0}),
            display_name="dashboard lora run",
            checkpoint_policy=pb.CheckpointPolicy(interval_steps=100_000),
        )
        wait_for(
            "the lora run to train",
            lambda: (r := client.get_run(run.name)).state == pb.Run.RUNNING and r.step > 5,
            timeout=300,
        )
        yield run.name
        if client.get_run(run.name).state in (pb.Run.RUNNING, pb.Run.PAUSED):
            client.stop_run(run.name)


@pytest.fixture(scope="module")
def lm_bridge(lm_service: Service, lm_run: str, logs_dir: Path) -> Iterator[BridgeProc]:
    b = start_bridge(lm_service.address, logs_dir / "lm-bridge.log")
    yield b
    _stop(b.proc)


def test_page_shows_the_loss_chart_and_sample_completions_of_a_lora_run(
    lm_bridge: BridgeProc, lm_run: str, lm_service: Service, artifacts_dir: Path
) -> None:
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1100})
            page.set_default_timeout(120_000)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(lm_bridge.url)
            page.wait_for_selector(f'#runs .run.selected[data-run="{lm_run}"]')
            page.wait_for_selector("#view-lm:not([hidden])")
            # Train and validation loss share one chart once a validation loss came.
            page.wait_for_selector(f'{LOSS_CHART}[data-members="train_loss,val_loss"]')
            page.wait_for_selector("#samples .sample[data-step]")
            page.wait_for_function(
                "() => !['–', ''].includes(document.getElementById('lm-tokens').textContent)"
            )
            assert page.text_content("#lm-lr") not in ("–", "")
            # The learning rate is constant: its line is drawn all the same.
            lr_chart = '#charts .chart[data-metric="learning_rate"]'
            page.wait_for_selector(lr_chart)
            page.wait_for_function(f"() => ({LINE_PIXELS})('{lr_chart}') > 50")
            assert page.evaluate(LINE_PIXELS, LOSS_CHART) > 50

            with lm_service.client() as client:
                paused = client.pause_run(lm_run)  # the latest sample now stays the latest
                frame = next(iter(client.stream_frames(lm_run, timeout=60)))
            step = frame.lm.sample_step
            assert 0 < step <= paused.step and frame.lm.sample_prompt == PROMPT
            newest = f'#samples .sample[data-step="{step}"]'
            page.wait_for_selector(newest)
            assert page.get_attribute("#samples .sample", "data-step") == str(step)  # first
            # The page shows the service's text exactly, as text: no element made of the markup.
            shown = page.eval_on_selector(
                newest,
                "(e) => [e.querySelector('.sample-prompt').textContent,"
                " e.querySelector('.sample-completion').textContent]",
            )
            assert shown == [PROMPT, frame.lm.sample_completion]
            assert page.locator("#samples b, #samples i").count() == 0

            with lm_service.client() as client:
                client.resume_run(lm_run)
            page.wait_for_timeout(1000)
            shot = artifacts_dir / "dashboard-lora.png"
            page.screenshot(path=str(shot), full_page=True)
            print(f"screenshot: {shot}")
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
    assert errors == []
