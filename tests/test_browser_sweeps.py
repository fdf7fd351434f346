"""The Sweeps page in a real browser: define a small sweep, watch its trials arrive in Optuna's history
chart, and open a trial's run on the Runs page. Screenshots at 1280 px go to ``test-artifacts/``."""

import time

import pytest

from lab import sweep_workers, sweeps
from livelab import ARTIFACTS, launch_chromium, require_chromium, serve_lab

pytestmark = pytest.mark.browser
WIDTH = 1280


@pytest.fixture
def lab_server(tmp_path):
    require_chromium()
    runs_dir = tmp_path / "runs"
    try:
        with serve_lab({"LAB_RUNS_DIR": str(runs_dir), "OMP_NUM_THREADS": "1"}, log=tmp_path / "server.log") as url:
            yield url, runs_dir
    finally:
        if (runs_dir / "sweeps.db").exists():
            for name in sweeps.list_sweeps(runs_dir):
                sweep_workers.stop_workers(name, runs_dir)


def screenshot(page, name: str) -> None:
    """The whole page at 1280 px: the viewport grows to the height of Streamlit's scrolling main area."""
    ARTIFACTS.mkdir(exist_ok=True)
    page.mouse.move(2, 2)
    height = page.evaluate("() => document.querySelector('[data-testid=stMain]').scrollHeight")
    page.set_viewport_size({"width": WIDTH, "height": min(max(int(height), 900), 4000)})
    page.wait_for_timeout(1500)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), timeout=90_000, animations="disabled")
    page.set_viewport_size({"width": WIDTH, "height": 1000})


def history_points(page) -> int:
    """Trials drawn in the optimisation history (its first trace: one marker per finished trial)."""
    return page.evaluate("""() => { const g = document.querySelector('.st-key-sw-history .js-plotly-plot');
        return g && g.data && g.data.length ? (g.data[0].x || []).length : 0; }""")


def fill(page, label: str, value) -> None:
    box = page.locator("[data-testid=stMain]").get_by_role("spinbutton", name=label, exact=True)
    box.fill(str(value))
    box.press("Tab")


def test_a_sweep_is_defined_watched_and_its_trial_opened_in_the_browser(lab_server):
    from playwright.sync_api import expect, sync_playwright

    url, runs_dir = lab_server
    expect.set_options(timeout=90_000)  # a shared 2-core machine renders slowly
    with sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_page(viewport={"width": WIDTH, "height": 1000})
            page.set_default_timeout(90_000)
            page.goto(url)  # the home page first: it sets up the lab's navigation
            expect(page.get_by_role("heading", name="Meta-Learning Lab")).to_be_visible()
            page.get_by_role("link", name="Sweeps").click()
            expect(page.get_by_role("heading", name="Sweeps", exact=True)).to_be_visible()
            main = page.locator("[data-testid=stMain]")
            name = main.get_by_role("textbox", name="Sweep name")
            name.fill("browser-sweep")
            name.press("Tab")
            for label, value in [("Validate every", 5), ("Validation episodes", 10), ("Trials", 2),
                                 ("Minutes per trial", 0), ("Steps per trial", 10), ("Workers", 2)]:
                fill(page, label, value)
            screenshot(page, "sweeps-form")
            main.get_by_role("button", name="Create the sweep and launch its workers").click()

            deadline = time.monotonic() + 180
            while history_points(page) < 2:
                assert time.monotonic() < deadline, "the two trials did not reach the history chart"
                page.wait_for_timeout(500)
            state = sweeps.status("browser-sweep", runs_dir)
            assert state["finished"] == 2 and len(state["trials"]) == 2
            expect(main.get_by_text("Best (validation)")).to_be_visible()
            screenshot(page, "sweeps-watch")

            run = state["trials"][0]["run"]
            main.get_by_role("link", name=f"Open {run} on the Runs page").click()
            expect(page.get_by_role("heading", name="Runs", exact=True)).to_be_visible()
            expect(main.get_by_role("heading", name=run)).to_be_visible()
            screenshot(page, "sweeps-trial-run")
        finally:
            browser.close()
