"""Issue #24, Links, in a real browser: the sender's setting survives a page switch in the URL, and a
receiver (a new browser context: a session of its own) opening the sender's links sees the sender's view.

AppTest cannot show this: Streamlit's frontend writes a bound widget into the URL only when its value
differs from the widget's default, and the Sparsify form's defaults are the session's setting.
"""
import os
import urllib.parse

import pytest

from tests.test_browser import _launch, _serve

pytestmark = [pytest.mark.browser, pytest.mark.slow]  # a server of its own and two browser sessions (~1 min)


@pytest.fixture
def app_url(tmp_path_factory):
    yield from _serve(tmp_path_factory)


def test_links_copied_after_a_page_switch_reproduce_the_view(app_url):
    sync_api = pytest.importorskip("playwright.sync_api")
    expect = sync_api.expect
    expect.set_options(timeout=60_000)
    mlp = urllib.parse.quote("Digits MLP (shipped, 8×8 digits)")
    with sync_api.sync_playwright() as p:
        browser = _launch(p)
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        page.set_default_timeout(90_000)
        page.goto(f"{app_url}/sparsify?model_source={mlp}")
        page.get_by_text("Per-layer report").wait_for()
        page.locator('[data-testid="stSelectbox"]', has_text="N:M").first.click()
        page.get_by_role("option", name="1:4", exact=True).click()
        page.wait_for_function("() => window.location.search.includes('sp_nm=1')")
        exclude = page.get_by_label("Exclude regex")
        exclude.fill("fc3")
        exclude.press("Enter")
        page.wait_for_function("() => window.location.search.includes('sp_exclude=fc3')")

        page.locator('[data-testid="stSidebarNavLink"]', has_text="Masks").click()
        page.get_by_text("Showing the masks of").wait_for()
        layer_box = page.locator('[data-testid="stSelectbox"]', has_text="Layer").first
        layer_box.click()
        page.get_by_role("option", name="fc2", exact=True).click()
        page.wait_for_function("() => window.location.search.includes('mask_layer=fc2')")
        masks_link = page.url

        page.locator('[data-testid="stSidebarNavLink"]', has_text="Sparsify").click()
        page.get_by_text("Per-layer report").wait_for()
        page.wait_for_function("() => window.location.search.includes('sp_config')")
        sparsify_link = page.url
        if os.environ.get("SPARSEKIT_SCREENSHOT_DIR"):
            page.screenshot(path=f"{os.environ['SPARSEKIT_SCREENSHOT_DIR']}/links_sender.png")

        for link in (sparsify_link, masks_link):
            receiver = browser.new_context(viewport={"width": 1440, "height": 1000}).new_page()
            receiver.set_default_timeout(90_000)
            receiver.goto(link)
            if link == sparsify_link:
                receiver.get_by_text("Per-layer report").wait_for()
                expect(receiver.get_by_label("Exclude regex")).to_have_value("fc3")
                expect(receiver.get_by_role("combobox", name="N:M (keep N of every M)")).to_have_value("1:4")
                expect(receiver.locator('[data-testid="stMetric"]', has_text="Kept in pruned layers")).to_contain_text(
                    "25.0%")
            else:
                receiver.get_by_text("Showing the masks of").wait_for()
                expect(receiver.get_by_text("Showing the masks of")).to_contain_text("1:4 (keep 1 of 4) magnitude")
                expect(receiver.get_by_role("combobox", name="Layer", exact=True)).to_have_value("fc2")
            assert receiver.locator('[data-testid="stException"]').count() == 0
            receiver.context.close()
        browser.close()
