"""In a real browser: a digit drawn with the mouse, then "Why?": the nearest examples, the attribution
overlay and, for a MAML model, its inner steps one by one. Screenshots go to ``test-artifacts/``."""

import pytest

from lab import runs
from lab.config import TrainConfig
from lab.training import train
from livelab import ARTIFACTS, launch_chromium, require_chromium, serve_lab
from test_browser_draw import draw_circle, expect, pad, prediction, wait_idle

pytestmark = pytest.mark.browser


@pytest.fixture
def lab_with_a_maml_run(tmp_path):
    require_chromium()
    config = TrainConfig(algorithm="maml", dataset="digits", n_query=5, steps=20, val_every=20, val_episodes=5,
                         hparams={"hidden": 16, "inner_steps": 2})
    run_dir = runs.create_run(tmp_path / "runs", config, "maml-digits")
    list(train(config, run_dir))
    with serve_lab({"LAB_RUNS_DIR": str(tmp_path / "runs"), "OMP_NUM_THREADS": "1"}, log=tmp_path / "server.log") as url:
        yield url


def shot(page, name: str) -> None:
    """The page scrolled to the open tab of the explanation, then a screenshot of what shows."""
    panel = page.locator("[data-testid=stMain] [role=tabpanel]:visible").first
    panel.scroll_into_view_if_needed()
    page.wait_for_timeout(500)
    page.screenshot(path=ARTIFACTS / name)


def test_why_shows_neighbours_the_attribution_overlay_and_the_inner_steps(lab_with_a_maml_run):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_context(viewport={"width": 1280, "height": 1000}).new_page()
        page.set_default_timeout(120_000)
        page.goto(lab_with_a_maml_run)
        page.get_by_role("link", name="Draw & Predict").click()
        page.get_by_role("heading", name="Draw & Predict").wait_for()
        wait_idle(page)
        draw_circle(page, pad(page))
        assert prediction(page) == "0"
        page.get_by_text("Why? Explain this prediction").click()
        main = page.locator("[data-testid=stMain]")
        main.get_by_role("tab", name="Nearest examples").wait_for()
        wait_idle(page)
        expect(main.get_by_text("distance").first).to_be_visible()
        shot(page, "why-neighbours.png")
        main.get_by_role("tab", name="Where it looked").click()
        expect(main.get_by_text("Integrated Gradients")).to_be_visible()
        expect(main.locator("[data-testid=stPlotlyChart]").nth(1)).to_be_visible()
        shot(page, "why-attribution.png")
        main.get_by_role("tab", name="Watch it adapt").click()
        expect(main.get_by_text("does not adapt by gradient steps")).to_be_visible()
        shot(page, "why-protonet-steps.png")  # the shipped ProtoNet

        page.locator("[data-testid=stSidebar] [data-testid=stSelectbox]").nth(0).click()
        page.get_by_role("option", name="maml-digits").click()
        wait_idle(page)
        prediction(page)  # the same drawing, now explained by the MAML model
        wait_idle(page)
        main.get_by_role("tab", name="Watch it adapt").click()
        expect(main.get_by_text("After 2 step(s)")).to_be_visible(timeout=60_000)
        shot(page, "why-steps.png")
        browser.close()
