"""The Draw & Predict page in a real browser: Playwright drives Debian's Chromium against ``streamlit run``.

Draws digits and symbols on the pad with the mouse, teaches two symbols, and uploads files. Screenshots
go to ``test-artifacts/``.
"""

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from livelab import ARTIFACTS, browser, server  # noqa: F401 (fixtures)

TIMEOUT_MS = 120_000

pytestmark = pytest.mark.browser


@pytest.fixture
def page(server, browser, request):
    ARTIFACTS.mkdir(exist_ok=True)
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    pg.goto(server)
    pg.get_by_role("link", name="Draw & Predict").click()
    pg.get_by_role("heading", name="Draw & Predict").wait_for()
    yield pg
    pg.screenshot(path=ARTIFACTS / f"end-{request.node.name}.png", full_page=True)  # what the page ended on
    context.close()


def wait_idle(pg) -> None:
    """Wait until the script has finished rerunning (Streamlit shows a status widget while running)."""
    pg.wait_for_timeout(300)
    pg.locator("[data-testid='stStatusWidget']").wait_for(state="hidden")


def pad(pg, index: int = 0):
    """The pad's drawing surface: the top-most canvas of the index-th drawing pad."""
    surface = pg.locator("canvas.upper-canvas").nth(index)
    for attempt in range(5):  # a pad is remounted (cleared) by a rerun: take the new one
        try:
            surface.scroll_into_view_if_needed(timeout=10_000)
            return surface
        except Exception:
            pg.wait_for_timeout(500)
    surface.scroll_into_view_if_needed()
    return surface


def stroke(pg, surface, points) -> None:
    """Draw one stroke through ``points`` given in [0, 1] pad coordinates."""
    box = surface.bounding_box()
    xy = [(box["x"] + u * box["width"], box["y"] + v * box["height"]) for u, v in points]
    pg.mouse.move(*xy[0])
    pg.mouse.down()
    for x, y in xy[1:]:
        pg.mouse.move(x, y, steps=3)
    pg.mouse.up()


def draw_circle(pg, surface, r: float = 0.33, cx: float = 0.5, cy: float = 0.5, squash: float = 0.75) -> None:
    stroke(pg, surface, [(cx + squash * r * math.sin(t / 24 * 2 * math.pi), cy - r * math.cos(t / 24 * 2 * math.pi))
                         for t in range(26)])


def draw_cross(pg, surface) -> None:
    stroke(pg, surface, [(0.22 + 0.56 * i / 8, 0.2 + 0.6 * i / 8) for i in range(9)])
    stroke(pg, surface, [(0.78 - 0.56 * i / 8, 0.2 + 0.6 * i / 8) for i in range(9)])


def circle_points(r: float = 0.33, cx: float = 0.5, cy: float = 0.5, squash: float = 0.75):
    return [(cx + squash * r * math.sin(t / 24 * 2 * math.pi), cy - r * math.cos(t / 24 * 2 * math.pi))
            for t in range(26)]


DIGITS = {  # strokes of each digit in [0, 1] pad coordinates
    "0": [circle_points(0.33, squash=0.75)],
    "2": [[(0.3, 0.3), (0.36, 0.2), (0.5, 0.15), (0.64, 0.2), (0.68, 0.32), (0.62, 0.45), (0.5, 0.57), (0.3, 0.8),
           (0.72, 0.8)]],
    "5": [[(0.68, 0.16), (0.36, 0.16), (0.33, 0.46), (0.5, 0.42), (0.66, 0.5), (0.7, 0.66), (0.6, 0.8), (0.44, 0.84),
           (0.3, 0.78)]],
    "8": [[(0.5 + 0.18 * math.sin(2 * t / 32 * 2 * math.pi), 0.5 - 0.34 * math.cos(t / 32 * 2 * math.pi))
           for t in range(34)]],
}
ZIGZAG = [(0.15 + 0.7 * (i % 2), 0.15 + 0.7 * i / 9) for i in range(10)]  # no digit at all


def set_stroke(pg, width: int) -> None:
    """Move the pad's stroke-width slider (6 to 40) to ``width`` with the keyboard."""
    thumb = pg.locator("[data-testid='stSlider']").filter(has_text="Stroke width").get_by_role("slider").first
    thumb.focus()
    thumb.press("Home")
    if width == 40:
        thumb.press("End")  # one rerun instead of 34
    for _ in range(width - 6 if width != 40 else 0):
        thumb.press("ArrowRight")
    expect(thumb).to_have_value(str(width))
    # Each key's rerun remounts the pad: draw only once the last one is over (on a busy machine the
    # queued reruns start slowly, hence the long quiet spell).
    wait_settled(pg, quiet_ms=3000)


def wait_settled(pg, quiet_ms: int = 1500, timeout_ms: int = 60_000) -> None:
    """Wait until the script has not been running for ``quiet_ms`` in a row (reruns queued by a burst of
    key presses come one after another, each showing the status widget a while)."""
    status = pg.locator("[data-testid='stStatusWidget']")
    quiet, waited = 0, 0
    while quiet < quiet_ms and waited < timeout_ms:
        pg.wait_for_timeout(100)
        waited += 100
        quiet = 0 if status.is_visible() else quiet + 100


def clear(pg) -> None:
    pg.get_by_role("button", name="Clear").first.click()
    pg.get_by_text("Draw something first").wait_for()
    wait_idle(pg)


def prediction(pg) -> str:
    top = pg.locator(".dp-top").last
    top.wait_for()
    wait_images(pg)
    return top.inner_text().strip()


def wait_images(pg) -> None:
    """Wait until every image on the page has loaded (the 28x28 preview arrives after the prediction's text)."""
    pg.wait_for_function("() => Array.from(document.images).every(im => im.complete && im.naturalWidth > 0)")


def expect(locator):
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def test_drawing_a_digit_with_the_mouse_shows_a_prediction(page):
    wait_idle(page)
    assert page.get_by_text("Draw something first").is_visible()
    draw_circle(page, pad(page))
    assert prediction(page) == "0"
    assert page.get_by_text("What the model sees").is_visible()
    page.locator("[data-testid='stPlotlyChart']").wait_for()
    page.screenshot(path=ARTIFACTS / "draw-digit.png", full_page=True)
    page.get_by_role("button", name="Clear").click()
    page.get_by_text("Draw something first").wait_for()
    expect(page.locator(".dp-top")).to_have_count(0)
    stroke(page, pad(page), [(0.5, 0.15), (0.5, 0.85)])  # a "1"
    assert prediction(page) == "1"
    page.screenshot(path=ARTIFACTS / "draw-digit-one.png", full_page=True)


def test_teaching_two_symbols_gets_the_right_one_back_and_a_long_name_stays_on_one_line(page):
    page.get_by_text("Teach", exact=True).click()
    page.get_by_text("1 · Teach").wait_for()
    wait_idle(page)
    field = page.get_by_role("textbox", name="Symbol 1")
    field.fill("")
    field.press_sequentially("a ring drawn with one round stroke")  # 34 characters: the field takes 20
    field.press("Enter")
    wait_idle(page)
    ring = field.input_value()
    assert ring == "a ring drawn with on"
    page.get_by_text("A name is at most 20 characters").wait_for()
    page.screenshot(path=ARTIFACTS / "draw-teach-long-name.png", full_page=True)
    for name, draw, variants in ((ring, draw_circle, (0.3, 0.36)), ("cross", draw_cross, (0, 1))):
        page.locator("[data-testid='stRadio']").filter(has_text="Draw an example of").get_by_text(name,
                                                                                                  exact=True).click()
        wait_idle(page)
        for i, v in enumerate(variants):
            if name == ring:
                draw(page, pad(page, 0), r=v)
            else:
                draw(page, pad(page, 0))
            page.get_by_text("as the model sees it").wait_for()  # the page has the drawing
            wait_idle(page)
            page.get_by_role("button", name=f"Add to “{name}”").click()
            page.get_by_text(f"{name} · {i + 1}/5").wait_for()
            wait_idle(page)
    page.get_by_role("button", name="Adapt to these examples").click()
    page.get_by_text("Adapted to 2 symbols from 4 drawings").wait_for()
    wait_idle(page)
    draw_cross(page, pad(page, 1))
    assert prediction(page) == "cross"
    page.screenshot(path=ARTIFACTS / "teach-cross.png", full_page=True)
    page.get_by_role("button", name="Clear").last.click()
    expect(page.locator(".dp-top")).to_have_count(0)
    draw_circle(page, pad(page, 1), r=0.34, squash=0.9)
    assert prediction(page) == ring
    top = page.locator(".dp-top").last.bounding_box()
    assert top["height"] < 60  # one line, not the giant font over many
    page.screenshot(path=ARTIFACTS / "draw-teach-long-name-predicted.png", full_page=True)


@pytest.mark.parametrize("width", [6, 10, 20, 40])
def test_digits_drawn_with_the_mouse_read_right_at_every_stroke_width(page, width):
    wait_idle(page)
    set_stroke(page, width)
    for digit, strokes in DIGITS.items():
        for points in strokes:
            stroke(page, pad(page), points)
        assert prediction(page) == digit, f"{digit} drawn {width} px wide"
        expect(page.locator(".dp-unsure")).to_have_count(0)
        page.screenshot(path=ARTIFACTS / f"draw-width-{width:02d}-digit-{digit}.png", full_page=True)
        clear(page)


def test_a_scribble_shows_the_not_sure_state(page):
    wait_idle(page)
    stroke(page, pad(page), ZIGZAG)
    page.locator(".dp-unsure").wait_for()
    assert page.locator(".dp-unsure").inner_text().strip() == "Not sure"
    page.get_by_text("a best guess, not an answer").wait_for()
    wait_images(page)
    page.screenshot(path=ARTIFACTS / "draw-scribble-unsure.png", full_page=True)


def _digit_photo(tmp_path) -> Path:
    """A '7' written in dark ink on light paper, saved as a JPEG."""
    im = Image.new("RGB", (360, 480), (236, 232, 220))
    d = ImageDraw.Draw(im)
    d.line([(90, 110), (270, 110), (160, 400)], fill=(30, 30, 60), width=22)
    path = tmp_path / "seven.jpg"
    im.save(path, quality=90)
    return path


def test_uploading_a_file_shows_its_prediction_and_a_bad_file_a_clear_error(page, tmp_path):
    page.get_by_text("Upload", exact=True).first.click()
    wait_idle(page)
    chooser = page.locator("[data-testid='stFileUploader'] input[type='file']").first
    chooser.set_input_files(str(_digit_photo(tmp_path)))
    assert prediction(page) == "7"
    page.screenshot(path=ARTIFACTS / "upload-digit.png", full_page=True)
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"this is a text file renamed .png\n" * 4)
    chooser.set_input_files(str(bad))
    page.get_by_text("not an image").wait_for()
    expect(page.locator(".dp-top")).to_have_count(0)
    page.screenshot(path=ARTIFACTS / "upload-bad.png", full_page=True)


def _over_five_mb(tmp_path) -> Path:
    noise = np.random.default_rng(0).integers(0, 256, (1400, 1400, 3), dtype=np.uint8)
    path = tmp_path / "noise.png"
    Image.fromarray(noise).save(path)
    assert path.stat().st_size > 5 * 2**20
    return path


def test_a_file_over_5_mb_is_refused_on_the_page_and_clears_the_prediction_before_it(page, tmp_path):
    page.get_by_text("Upload", exact=True).first.click()
    wait_idle(page)
    chooser = page.locator("[data-testid='stFileUploader'] input[type='file']").first
    chooser.set_input_files(str(_digit_photo(tmp_path)))
    assert prediction(page) == "7"
    chooser.set_input_files(str(_over_five_mb(tmp_path)))
    page.locator("[data-testid='stAlert']").filter(has_text="the limit is 5 MB").wait_for()
    expect(page.locator(".dp-top")).to_have_count(0)
    page.screenshot(path=ARTIFACTS / "draw-upload-over-5mb.png", full_page=True)
    tiny = tmp_path / "dot.png"
    Image.new("RGB", (1, 1), "black").save(tiny)
    chooser.set_input_files(str(tiny))
    page.locator("[data-testid='stAlert']").filter(has_text="the image is too small (1x1 pixels)").wait_for()
    expect(page.get_by_text("the pad is blank")).to_have_count(0)


def test_an_animated_gif_is_read_from_its_first_frame_and_the_page_says_so(page, tmp_path):
    page.get_by_text("Upload", exact=True).first.click()
    wait_idle(page)
    first = Image.open(_digit_photo(tmp_path)).convert("P")
    path = tmp_path / "seven.gif"
    first.save(path, save_all=True, append_images=[Image.new("P", first.size, 255)], duration=100)
    page.locator("[data-testid='stFileUploader'] input[type='file']").first.set_input_files(str(path))
    assert prediction(page) == "7"
    page.get_by_text("only the first was used").wait_for()
    page.screenshot(path=ARTIFACTS / "draw-upload-gif.png", full_page=True)


def test_a_deep_link_opens_the_page_inside_the_labs_navigation(server, browser):
    """A bookmarked address runs the entry point first: the sidebar names the lab's pages by title and the
    page has the lab's wide layout, whichever page the browser opened first."""
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    pg.goto(f"{server}/draw")
    pg.get_by_role("heading", name="Draw & Predict").wait_for()
    nav = pg.locator("[data-testid='stSidebarNav']")
    for title in ("Home", "Meta-Train", "Runs", "Sweeps", "Task Clusters", "Draw & Predict"):
        assert nav.get_by_text(title, exact=True).count() == 1, title
    assert nav.get_by_text("meta train", exact=True).count() == 0  # not the file names of a folder of scripts
    context.close()
