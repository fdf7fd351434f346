"""The Task Clusters page in a real browser: Playwright drives Debian's Chromium against ``streamlit run``.

While the tasks are embedded and clustered a progress bar counts them; then a click on a point of
the task scatter shows that task's support images. The screenshot goes to ``test-artifacts/``.
"""

import re

import pytest

from livelab import ARTIFACTS, browser, server  # noqa: F401 (fixtures)

TIMEOUT_MS = 300_000  # the first render embeds 300 tasks; shared CPUs can be slow

pytestmark = pytest.mark.browser


def test_clicking_a_task_in_the_scatter_shows_its_support_images(server, browser, omniglot, mnist):
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    try:
        page.goto(server, timeout=TIMEOUT_MS)
        page.get_by_role("link", name="Task Clusters").click(timeout=TIMEOUT_MS)
        counted = re.compile(r"\d+ of (300 tasks|\d+ values of K)")
        counting = page.locator("[data-testid=stProgress]").filter(has_text=counted)
        counting.first.wait_for(state="visible", timeout=TIMEOUT_MS)  # the embedding or K-means, counted
        points = page.locator(".st-key-scatter .scatterlayer path.point")
        points.first.wait_for(state="visible", timeout=TIMEOUT_MS)
        assert points.count() == 300  # one marker per task
        assert page.get_by_text("untrained").first.is_visible()
        assert page.locator('[data-testid="stImage"] img').count() == 0

        target = points.nth(7)
        target.scroll_into_view_if_needed()
        box = target.bounding_box()
        page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.locator("strong", has_text=re.compile(r"^Task \d+$")).wait_for(timeout=TIMEOUT_MS)
        images = page.locator('[data-testid="stImage"] img')
        images.first.wait_for(state="visible", timeout=TIMEOUT_MS)
        assert images.count() == 5  # a 5-way 1-shot support set
        assert all(images.nth(i).evaluate("img => img.complete && img.naturalWidth") == 112 for i in range(5))
        page.mouse.move(5, 5)  # no hover label in the picture
        page.set_viewport_size({"width": 1280, "height": 2000})  # the whole page at once: the app scrolls inside
        page.wait_for_timeout(1500)
        page.screenshot(path=str(ARTIFACTS / "clusters-page.png"))
    finally:
        page.close()
