"""In a real browser: a run launched from the Meta-Train form shows its first step and a visible chart
point within seconds, and three tabs watching it show the same step. Screenshots of the form with a
refused value and of the live panel go to ``test-artifacts/``."""

import io
import json
import os
import re
import signal
import time
from pathlib import Path
from urllib.parse import urlencode

import pytest
from PIL import Image

from lab import jobs, runs
from livelab import ARTIFACTS, launch_chromium, require_chromium, serve_lab
from ui.charts import PALETTE

pytestmark = pytest.mark.browser
WIDTH = 1280
# A short time budget, logged at every other step: the first point comes early on any machine.
RUN = dict(dataset="digits", n_query=3, meta_batch=1, steps=5000, time_limit="true", minutes=0.75, val_every=25,
           val_episodes=10, log_every=2)
FIRST_POINT_S = 10.0  # from the first metric line on disk to the step and a point drawn in the tab
MIN_POINT_PIXELS = 20  # a filled dot of the curve colour, at the least


@pytest.fixture
def lab(tmp_path):
    require_chromium()
    runs_dir = tmp_path / "runs"
    try:
        with serve_lab({"LAB_RUNS_DIR": str(runs_dir), "OMP_NUM_THREADS": "1"}, log=tmp_path / "server.log") as url:
            yield url, runs_dir
    finally:
        for run in runs.list_runs(runs_dir):  # a worker this test started and left running
            status = runs.read_status(Path(run["path"]))
            if jobs.is_active(status):
                os.kill(status["pid"], signal.SIGKILL)


def shown_step(page) -> int | None:
    """The step the live panel's progress bar says, or None before it is drawn."""
    bar = page.locator("[data-testid=stMain] [data-testid=stProgress]").first
    if not bar.count():
        return None
    found = re.search(r"Step ([\d,]+)", bar.inner_text())
    return int(found[1].replace(",", "")) if found else None


def drawn_points(page) -> int:
    """Pixels of the curve colour in the live loss chart, as drawn on screen (0 before it is drawn):
    a first point is a filled dot of a few dozen pixels."""
    chart = page.locator("[data-testid=stMain] [data-testid=stVegaLiteChart]").first
    if not chart.count() or not chart.locator("canvas, svg").count():
        return 0
    image = Image.open(io.BytesIO(chart.screenshot(animations="disabled"))).convert("RGB")
    colour = tuple(int(PALETTE[0][i:i + 2], 16) for i in (1, 3, 5))
    return sum(1 for pixel in image.getdata() if sum(abs(a - b) for a, b in zip(pixel, colour)) < 60)


def wait_for(page, predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        page.wait_for_timeout(250)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def screenshot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.mouse.move(2, 2)
    height = page.evaluate("() => document.querySelector('[data-testid=stMain]').scrollHeight")
    page.set_viewport_size({"width": WIDTH, "height": min(max(int(height), 900), 3200)})
    page.wait_for_timeout(1000)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), animations="disabled")
    page.set_viewport_size({"width": WIDTH, "height": 1000})


def test_a_launched_run_shows_its_first_point_within_seconds_and_the_same_step_in_three_tabs(lab):
    from playwright.sync_api import expect, sync_playwright

    url, runs_dir = lab
    expect.set_options(timeout=60_000)
    with sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            tab = browser.new_page(viewport={"width": WIDTH, "height": 1000})
            tab.set_default_timeout(60_000)
            tab.goto(url)
            expect(tab.get_by_role("heading", name="Meta-Learning Lab")).to_be_visible()

            # A refused value keeps Launch disabled, with its reason under the field.
            tab.goto(f"{url}/meta_train?{urlencode({**RUN, 'meta_lr': -0.01})}")
            main = tab.locator("[data-testid=stMain]")
            expect(main.get_by_text("Must be a positive number, not -0.01")).to_be_visible()
            launch = main.get_by_role("button", name="Launch meta-training")
            expect(launch).to_be_disabled()
            screenshot(tab, "meta-train-refused")
            lr = tab.get_by_role("spinbutton", name="Meta learning rate")
            lr.fill("0.002")
            lr.press("Enter")
            expect(launch).to_be_enabled()
            expect(main.get_by_text("Ends at 5,000 steps or after 0.75 min")).to_be_visible()
            name = tab.get_by_role("textbox", name="Run name")
            name.fill("live-run")
            name.press("Enter")
            launch.click()
            run_dir = runs_dir / "live-run"
            wait_for(tab, lambda: (run_dir / "config.json").exists(), 60, "the run folder")
            config = json.loads((run_dir / "config.json").read_text())
            assert (config["meta_lr"], config["minutes"], config["steps"]) == (0.002, 0.75, 5000)

            others = []
            for _ in range(2):
                other = browser.new_page(viewport={"width": WIDTH, "height": 1000})
                other.goto(f"{url}/meta_train")
                others.append(other)
            for page in (tab, *others):
                expect(page.get_by_text("live-run", exact=True).first).to_be_visible()

            wait_for(tab, lambda: runs.read_jsonl(run_dir / "metrics.jsonl"), 120, "the first metric line")
            first = time.monotonic()
            try:
                wait_for(tab, lambda: (shown_step(tab) or 0) >= 1 and drawn_points(tab) >= MIN_POINT_PIXELS,
                         FIRST_POINT_S, "a step count and a drawn point")
            except AssertionError:
                screenshot(tab, "meta-train-first-point-late")
                raise AssertionError(f"tab: step {shown_step(tab)}, {drawn_points(tab)} points; others: "
                                     f"{[(shown_step(o), drawn_points(o)) for o in others]}; on disk: "
                                     f"{runs.read_status(run_dir)}") from None
            print(f"first step and point shown {time.monotonic() - first:.1f} s after the first metric line")
            screenshot(tab, "meta-train-first-point")

            # No tab lags: each shows at least the step on disk a moment ago, within two refreshes.
            on_disk = runs.read_status(run_dir)["step"]
            for page in (tab, *others):
                wait_for(page, lambda page=page: (shown_step(page) or 0) >= on_disk, 10, f"step {on_disk} in every tab")

            # Stopped, the run holds still: all three tabs show exactly the step on disk.
            main.get_by_role("button", name="Stop", exact=True).click()
            wait_for(tab, lambda: runs.read_status(run_dir)["state"] == "stopped", 60, "the run to stop")
            final = runs.read_status(run_dir)["step"]
            for page in (tab, *others):
                expect(page.locator(".stMarkdownBadge").filter(has_text="Stopped")).to_be_visible()
                wait_for(page, lambda page=page: shown_step(page) == final, 15, f"step {final} in every tab")
            screenshot(tab, "meta-train-stopped")
        finally:
            browser.close()


def test_the_live_panel_says_when_a_run_is_validating(lab):
    from playwright.sync_api import expect, sync_playwright

    url, runs_dir = lab
    # Validation after ten quick steps, over enough episodes to last several refreshes of the panel.
    slow_validation = dict(dataset="digits", n_query=3, meta_batch=1, steps=20, val_every=10, val_episodes=3000,
                           log_every=2)
    with sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            tab = browser.new_page(viewport={"width": WIDTH, "height": 1000})
            tab.set_default_timeout(60_000)
            tab.goto(f"{url}/meta_train?{urlencode(slow_validation)}")
            main = tab.locator("[data-testid=stMain]")
            name = tab.get_by_role("textbox", name="Run name")
            name.fill("validating-run")
            name.press("Enter")
            main.get_by_role("button", name="Launch meta-training").click()
            run_dir = runs_dir / "validating-run"
            wait_for(tab, lambda: runs.read_status(run_dir).get("phase") == "validating"
                     if (run_dir / "status.json").exists() else False, 120, "the worker to start validating")
            panel = main.locator("[data-testid=stProgress]").filter(has_text="Meta-validating")
            expect(panel.first).to_be_visible(timeout=15_000)
            assert re.search(r"Meta-validating: [\d,]+ of 3,000 episodes", panel.first.inner_text())
            screenshot(tab, "meta-train-validating")
        finally:
            browser.close()
