"""The page in a real headless Chromium against a real service and bridge."""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import Page, sync_playwright
from trainsvc_client import pb

from .conftest import (
    CHROMIUM_ARGS,
    TINY_CONFIG,
    BridgeProc,
    Service,
    chromium_path,
    wait_for,
)

FRAMES = "document.getElementById('view-live').dataset"

# Pixels of the agents' colour (#5eead4) on the field canvas.
AGENT_PIXELS = """() => {
  const c = document.getElementById('field');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 0; i < d.length; i += 4)
    if (Math.abs(d[i] - 94) < 8 && Math.abs(d[i + 1] - 234) < 8 && Math.abs(d[i + 2] - 212) < 8) n++;
  return n;
}"""


def _step(page: Page) -> int:
    return int(page.evaluate(f"{FRAMES}.step") or 0)


def test_page_shows_the_live_run_and_pauses_and_resumes_it(
    bridge: BridgeProc, live_run: str, service: Service, artifacts_dir: Path
) -> None:
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            page.set_default_timeout(120_000)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(bridge.url)

            # A silent page follows the most active run: ours, live.
            page.wait_for_selector('#conn[data-state="live"]')
            page.wait_for_selector(f'#runs .run.selected[data-run="{live_run}"]')
            page.wait_for_function(f"() => Number({FRAMES}.frames) >= 3")

            # The field canvas changes as frames arrive: new steps, new pixels.
            before_step = _step(page)
            before_pixels = page.evaluate("document.getElementById('field').toDataURL()")
            page.wait_for_function(f"() => Number({FRAMES}.step) > {before_step}")
            page.wait_for_function(
                "(p) => document.getElementById('field').toDataURL() !== p", arg=before_pixels
            )
            assert page.evaluate(AGENT_PIXELS) > 0, "no agent drawn on the field"
            page.wait_for_selector("#charts .chart")

            with service.client() as client:
                # Pause from the page: the service holds the run.
                page.click("#btn-pause")
                wait_for(
                    "the run to be PAUSED",
                    lambda: client.get_run(live_run).state == pb.Run.PAUSED,
                )
                page.wait_for_selector('#run-state[data-state="PAUSED"]')
                paused_step = client.get_run(live_run).step

                # Resume from the page: training and frames continue past the pause.
                page.click("#btn-resume")
                wait_for(
                    "the run to train again",
                    lambda: (
                        (r := client.get_run(live_run)).state == pb.Run.RUNNING
                        and r.step > paused_step
                    ),
                )
                page.wait_for_function(f"() => Number({FRAMES}.step) > {paused_step}")

                # Stop asks first; cancelling leaves the run running.
                page.click("#btn-stop")
                page.wait_for_selector("#stop-dialog[open]")
                page.click("#stop-cancel")
                page.wait_for_selector("#stop-dialog:not([open])", state="attached")
                assert client.get_run(live_run).state == pb.Run.RUNNING

            page.wait_for_timeout(1000)  # let the charts take a few more points
            shot = artifacts_dir / "dashboard-emergence.png"
            page.screenshot(path=str(shot), full_page=True)
            print(f"screenshot: {shot}")
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
    assert errors == []


# Over `ms` milliseconds, for every frame the page draws: does the field canvas show
# any of the field itself? Each of the `cells` x `cells` cells is read near its corner,
# away from an agent's disc (drawn at the cell's centre): a pixel that is neither the
# empty background nor the colour of an empty cell. Returns [frames with a field, frames].
FIELD_SHOWN = """([ms, cells]) => new Promise((done) => {
  const view = document.getElementById('view-live');
  const c = document.getElementById('field');
  const ctx = c.getContext('2d');
  const near = (d, i, r, g, b) =>
    Math.abs(d[i] - r) <= 6 && Math.abs(d[i + 1] - g) <= 6 && Math.abs(d[i + 2] - b) <= 6;
  let seen = view.dataset.frames, shown = 0, total = 0;
  const end = performance.now() + ms;
  const tick = () => {
    if (view.dataset.frames !== seen) {
      seen = view.dataset.frames;
      total++;
      const d = ctx.getImageData(0, 0, c.width, c.height).data;
      const sx = c.width / cells, sy = c.height / cells;
      let any = false;
      for (let r = 0; r < cells && !any; r++)
        for (let q = 0; q < cells && !any; q++) {
          const i = (Math.floor((r + 0.08) * sy) * c.width + Math.floor((q + 0.08) * sx)) * 4;
          any = !near(d, i, 11, 13, 18) && !near(d, i, 0, 0, 4);
        }
      if (any) shown++;
    }
    if (performance.now() < end) requestAnimationFrame(tick); else done([shown, total]);
  };
  requestAnimationFrame(tick);
})"""


def test_field_canvas_shows_the_field_in_nearly_every_frame(
    bridge: BridgeProc, live_run: str
) -> None:
    """Frames never show a blank field (an episode that has just been reset), and the
    colour scale keeps a faint field visible: over 10 s, >= 95% of frames show it."""
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(120_000)
            page.goto(bridge.url)
            page.wait_for_selector(f'#runs .run.selected[data-run="{live_run}"]')
            page.wait_for_function(f"() => Number({FRAMES}.frames) >= 3")
            shown, total = page.evaluate(FIELD_SHOWN, [10_000, TINY_CONFIG["field_width"]])
        finally:
            browser.close()
    print(f"field shown in {shown} of {total} frames")
    assert total >= 10, f"only {total} frames drawn in 10 s"
    assert shown >= 0.95 * total, f"the field was blank in {total - shown} of {total} frames"
