"""In a real browser: launch a run from the Meta-Train page, watch it learn, stop it, resume it, see it
finish, then overlay two runs on the Runs page. Screenshots of each page go to ``test-artifacts/``."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlencode

import pytest

from lab import jobs, runs
from livelab import ARTIFACTS, ROOT, launch_chromium, require_chromium, serve_lab

pytestmark = pytest.mark.browser
# A time budget, not a step count: the run lasts as long on a fast machine as on a slow one.
RUN = dict(dataset="digits", n_query=3, meta_batch=1, steps=100000, time_limit="true", minutes=0.4, val_every=50,
           val_episodes=10, log_every=5)
WIDTH = 1280


@pytest.fixture
def lab_server(tmp_path):
    require_chromium()
    runs_dir = tmp_path / "runs"
    env = {**os.environ, "LAB_RUNS_DIR": str(runs_dir), "OMP_NUM_THREADS": "1"}
    # A second, short run to overlay later, trained meanwhile from the command line.
    other = subprocess.Popen([sys.executable, "-m", "lab", "train", "--dataset", "digits", "--n-query", "3",
                              "--meta-batch", "1", "--steps", "20", "--val-every", "10", "--val-episodes", "10",
                              "--log-every", "2", "--runs-dir", str(runs_dir), "--name", "cli-run"],
                             cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with serve_lab({"LAB_RUNS_DIR": str(runs_dir), "OMP_NUM_THREADS": "1"}, log=tmp_path / "server.log") as url:
            yield url, runs_dir, other
    finally:
        other.kill()
        other.wait(timeout=15)
        for run in runs.list_runs(runs_dir):  # a worker this test started and left running
            status = runs.read_status(Path(run["path"]))
            if jobs.is_active(status):
                os.kill(status["pid"], signal.SIGKILL)


def _screenshot(page, name: str) -> None:
    """The whole page: the viewport grows to the height of Streamlit's scrolling main area first."""
    ARTIFACTS.mkdir(exist_ok=True)
    page.mouse.move(2, 2)  # no hover tooltip in the picture
    height = page.evaluate("() => document.querySelector('[data-testid=stMain]').scrollHeight")
    page.set_viewport_size({"width": WIDTH, "height": min(max(int(height), 900), 3200)})
    page.wait_for_timeout(1500)
    try:  # between two live refreshes, so nothing is drawn faded as stale
        page.wait_for_function("() => !document.querySelector('[data-stale=true]')", timeout=10_000, polling=100)
    except Exception:  # noqa: BLE001 - a picture taken mid-refresh is still a picture
        pass
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), timeout=90_000, animations="disabled")
    page.set_viewport_size({"width": WIDTH, "height": 1000})


def _points(page) -> int:
    """Metric lines the live panel has drawn: the last step its progress bar names, over the logging
    interval (0 before the first)."""
    text = page.locator("[data-testid=stMain] [data-testid=stProgress]").first.inner_text()
    found = re.search(r"Step ([\d,]+)", text)
    return int(found[1].replace(",", "")) // RUN["log_every"] if found else 0


def _progress(page) -> int:
    bar = page.locator("[data-testid=stProgress] [role=progressbar]").first
    return int(float(bar.get_attribute("aria-valuenow") or 0))


def badge(page, state: str):
    return page.locator(".stMarkdownBadge").filter(has_text=state)


def _wait(page, predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        page.wait_for_timeout(500)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def test_a_run_is_launched_watched_stopped_resumed_and_overlaid_in_the_browser(lab_server):
    from playwright.sync_api import expect, sync_playwright

    url, runs_dir, other = lab_server
    expect.set_options(timeout=60_000)  # a shared 2-core machine renders slowly
    with sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            drive(browser, url, runs_dir, other)
        finally:
            browser.close()
    listed = json.loads(subprocess.run([sys.executable, "-m", "lab", "runs", "--runs-dir", str(runs_dir), "--json"],
                                       cwd=ROOT, capture_output=True, text=True, check=True).stdout)
    assert {(r["name"], r["status"]) for r in listed} == {("browser-run", "finished"), ("cli-run", "finished")}


def drive(browser, url, runs_dir, other):
    """The user's path through the three pages."""
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": WIDTH, "height": 1000})
    page.set_default_timeout(60_000)
    page.goto(url)
    expect(page.get_by_role("heading", name="Meta-Learning Lab")).to_be_visible()

    # The shareable link opens the form filled in; the name is typed.
    page.goto(f"{url}/meta_train?{urlencode(RUN)}")
    expect(page.get_by_role("heading", name="Meta-Train")).to_be_visible()
    expect(page.get_by_role("spinbutton", name="Minutes")).to_have_value("0.4")
    name = page.get_by_role("textbox", name="Run name")
    name.fill("browser-run")
    name.press("Enter")
    page.locator("[data-testid=stMain]").get_by_role("button", name="Launch meta-training").click()
    expect(page.get_by_text("browser-run", exact=True).first).to_be_visible()

    # Live: the curves are in place from the launch on; the steps and the progress advance, polled from the run folder.
    expect(page.locator("[data-testid=stMain] [data-testid=stVegaLiteChart]")).to_have_count(4)
    first = _wait(page, lambda: _points(page) >= 2 and (_points(page), _progress(page)), 90, "the first points")
    _wait(page, lambda: _points(page) > first[0] + 1 and _progress(page) > first[1], 60, "the curve to grow")
    expect(badge(page, "Running")).to_be_visible()

    main = page.locator("[data-testid=stMain]")  # not the toolbar's own Stop button
    main.get_by_role("button", name="Stop", exact=True).click()
    expect(badge(page, "Stopped")).to_be_visible()
    status = runs.read_status(runs_dir / "browser-run")
    assert status["state"] == "stopped" and runs.load_checkpoint(runs_dir / "browser-run" / "last.pt")["step"] == status["step"]
    stopped_points = _points(page)

    # A click that lands while the live panel is being redrawn can be lost; a person clicks again.
    for _ in range(3):
        main.get_by_role("button", name="Resume", exact=True).click()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and runs.read_status(runs_dir / "browser-run")["state"] == "stopped":
            time.sleep(0.5)
        if runs.read_status(runs_dir / "browser-run")["state"] != "stopped":
            break
    expect(badge(page, "Running").or_(badge(page, "Finished"))).to_be_visible()
    _screenshot(page, "meta-train-live")
    expect(badge(page, "Finished")).to_be_visible(timeout=120_000)
    assert _points(page) > stopped_points
    assert _progress(page) == 100
    steps = [r["step"] for r in runs.read_jsonl(runs_dir / "browser-run" / "metrics.jsonl")]
    assert steps == sorted(set(steps))  # the resumed metrics continue, nothing repeated
    _screenshot(page, "meta-train-finished")

    # Runs: both runs in the table, overlaid on one chart.
    assert other.wait(timeout=120) == 0
    page.goto(f"{url}/runs")
    expect(page.get_by_role("heading", name="Runs", exact=True)).to_be_visible()
    expect(main.get_by_role("button", name="Remove cli-run")).to_be_visible()  # chosen for the overlay

    def legend():
        return page.evaluate("""() => { const g = document.querySelector('.js-plotly-plot');
            return g && g.data ? g.data.filter(t => t.showlegend).map(t => t.name).sort() : []; }""")

    _wait(page, lambda: legend() == ["browser-run", "cli-run"], 30, "both runs on the overlay")
    main.get_by_role("radio", name="Train loss").click()
    _wait(page, lambda: legend() == ["browser-run", "cli-run"], 30, "both loss curves")
    _screenshot(page, "runs")
    page.goto(url)
    expect(page.get_by_role("heading", name="Latest runs")).to_be_visible()
    expect(page.locator("[data-testid=stDataFrame]")).to_have_count(2)
    _screenshot(page, "home")
