"""`pancreasai review` in a real browser (headless Chromium driven by Playwright): the worklist,
slice views that show images, verdicts saved to review.csv and still there after a reload, and
the access rules as a browser meets them.

Needs Debian's chromium (/usr/bin/chromium); deselect with -m 'not browser'.
"""

import csv
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from test_review_web import ReviewServer

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = ROOT / "output" / "review-screenshots"
VIEWPORT = {"width": 1200, "height": 800}
REVIEWER = "Dr. Ada Test"

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def demo_results(tmp_path_factory) -> Path:
    """What the demo writes (a CT segmentation and an IPMN assessment), plus a broken result file
    and a segmentation whose CT is gone."""
    folder = tmp_path_factory.mktemp("review_demo")
    result = subprocess.run([sys.executable, str(ROOT / "Resources" / "demo.py"), "--output", str(folder)],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    (folder / "broken_ipmn_result.json").write_text("{\"case\": ", encoding="utf-8")
    record = json.loads((folder / "sample_ct_phantom_pancreas.json").read_text(encoding="utf-8"))
    record.update(case="lost_ct", input=str(folder / "lost_ct.nii.gz"))
    (folder / "lost_ct_pancreas.json").write_text(json.dumps(record), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail("install Debian's chromium (apt-get install chromium) or deselect with -m 'not browser'")
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=30_000)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def review_server(demo_results):
    server = ReviewServer(demo_results)
    yield server
    server.stop()


def view_pixels(page) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(page.locator("#slice-views").screenshot())).convert("RGB"))


def wait_for_image(page, seconds: float = 30) -> np.ndarray:
    """The slice views' pixels once they show more than one colour (the first frame takes a while)."""
    deadline = time.monotonic() + seconds
    while True:
        pixels = view_pixels(page)
        if len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50 and pixels.std() > 10:
            return pixels
        if time.monotonic() > deadline:
            pytest.fail("The slice views show no image (a single colour).")
        time.sleep(0.5)


def current_case(page) -> str:
    return page.locator("#current-case").inner_text().strip()


def show_case(page, name: str) -> None:
    from playwright.sync_api import expect

    page.locator("#worklist tr", has_text=name).first.click()
    expect(page.locator("#current-case")).to_have_text(name)


def save(page) -> None:
    from playwright.sync_api import expect

    page.locator("#save-verdict").click()
    expect(page.locator("#message")).to_contain_text("Saved")


def screenshot(page, name: str) -> Path:
    """A page screenshot in output/review-screenshots, as a small PNG (palette colours)."""
    from PIL import Image

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / name
    image = Image.open(io.BytesIO(page.screenshot())).convert("RGB")
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    return path


def test_review_in_the_browser(browser, review_server, demo_results):
    from playwright.sync_api import expect

    page = browser.new_page(viewport=VIEWPORT)
    page.goto(review_server.url)
    rows = page.locator("#worklist tr")
    expect(rows.filter(has_text="sample_ct_phantom")).to_have_count(1)
    expect(rows.filter(has_text="sample_mr_phantom")).to_have_count(1)
    expect(rows.filter(has_text="lost_ct")).to_contain_text("cannot be shown")
    expect(rows.filter(has_text="broken")).to_contain_text("broken_ipmn_result.json could not be read")
    page.get_by_label("Reviewer").fill(REVIEWER)

    # Next / previous walk the worklist in its order; the cases that cannot be shown get no verdict.
    expect(page.locator("#current-case")).to_have_text("broken")
    page.locator("#next-case").click()
    expect(page.locator("#current-case")).to_have_text("lost_ct")
    expect(page.locator("#message")).to_contain_text("cannot be shown")
    expect(page.locator("#save-verdict")).to_have_count(0)
    page.locator("#next-case").click()
    expect(page.locator("#current-case")).to_have_text("sample_ct_phantom")
    page.locator("#next-case").click()
    expect(page.locator("#current-case")).to_have_text("sample_mr_phantom")
    page.locator("#previous-case").click()
    expect(page.locator("#current-case")).to_have_text("sample_ct_phantom")

    # The CT case: real slices, window presets, a verdict.
    wait_for_image(page)
    page.locator("#window-presets button", has_text="pancreas").click()
    page.get_by_label("accept", exact=True).check()
    page.get_by_label("Comment").fill("Clean outline; tail included.")
    save(page)
    expect(rows.filter(has_text="sample_ct_phantom")).to_contain_text("accept")
    time.sleep(1.0)
    ct_shot = screenshot(page, "review_ct.png")

    # The IPMN case: the heat map over T2, its colour bar, a disagreeing verdict with a class.
    show_case(page, "sample_mr_phantom")
    wait_for_image(page)
    expect(page.locator("#legend")).to_contain_text("heat map")
    page.get_by_label("disagree", exact=True).check()
    page.get_by_label("low-risk IPMN", exact=True).check()
    page.get_by_label("Comment").fill("Duct 4 mm, no mural nodule")
    save(page)
    expect(rows.filter(has_text="sample_mr_phantom")).to_contain_text("disagree (low-risk IPMN)")
    time.sleep(1.0)
    ipmn_shot = screenshot(page, "review_ipmn.png")
    page.locator("#background button", has_text="T1").click()
    wait_for_image(page)

    # A case name the worklist does not hold is refused, and the case on screen stays.
    page.evaluate("window.trame.state.set('current', 'ipmn:../../etc/passwd')")
    expect(page.locator("#message")).to_contain_text("is not a case of")
    expect(page.locator("#current-case")).to_have_text("sample_mr_phantom")

    # A reload rebuilds the page from the server: the same case, the verdicts from review.csv.
    page.reload()
    expect(page.locator("#current-case")).to_have_text("sample_mr_phantom")
    expect(rows.filter(has_text="sample_ct_phantom")).to_contain_text("accept")
    expect(rows.filter(has_text="sample_mr_phantom")).to_contain_text("disagree (low-risk IPMN)")
    expect(page.get_by_label("disagree", exact=True)).to_be_checked()
    expect(page.get_by_label("Comment")).to_have_value("Duct 4 mm, no mural nodule")
    wait_for_image(page)

    with open(demo_results / "review.csv", encoding="utf-8", newline="") as stream:
        stored = {row["case"]: row for row in csv.DictReader(stream)}
    assert set(stored) == {"sample_ct_phantom", "sample_mr_phantom"}
    ct, mr = stored["sample_ct_phantom"], stored["sample_mr_phantom"]
    assert (ct["reviewer"], ct["task"], ct["verdict"], ct["reviewer_class"], ct["comment"]) == \
        (REVIEWER, "segmentation", "accept", "", "Clean outline; tail included.")
    assert (mr["reviewer"], mr["task"], mr["verdict"], mr["reviewer_class"], mr["comment"]) == \
        (REVIEWER, "ipmn", "disagree", "low-risk IPMN", "Duct 4 mm, no mural nodule")
    assert mr["model_class"] == "high-risk IPMN" and mr["model"] and ct["model"]

    # output/review-screenshots/: copied by hand to Resources/Media for the README (a test run
    # never changes the repository's files)
    for shot in (ct_shot, ipmn_shot):
        assert shot.stat().st_size < 400_000
    page.close()


def test_files_outside_the_app_are_refused_to_the_browser(browser, review_server, demo_results):
    page = browser.new_page()
    for path in ("/review.csv", "/sample_ct_phantom_pancreas.json", "/%2e%2e/%2e%2e/etc/passwd",
                 "/" + str(demo_results / "sample_ct_phantom.nii.gz").lstrip("/")):
        response = page.goto(review_server.base + path)
        assert response.status in (403, 404), path
    page.close()


def test_with_a_token_a_page_without_it_is_refused(browser, demo_results):
    server = ReviewServer(demo_results, "--token", "review-test-token")
    try:
        page = browser.new_page(viewport=VIEWPORT)
        assert page.goto(server.base + "/").status == 403
        assert page.goto(server.base + "/?token=wrong").status == 403
        from playwright.sync_api import expect

        assert page.goto(server.base + "/?token=review-test-token").status == 200
        expect(page.locator("#worklist tr", has_text="sample_ct_phantom")).to_have_count(1)
        wait_for_image(page)  # the websocket (token from the cookie) works too
        page.close()
    finally:
        server.stop()
