"""The playground in a real headless Chromium: it streams text, charts and colours it.

Without Chromium (or playwright) the test skips, naming what to install. CI installs Chromium
(.ci/run) and sets CHARLM_REQUIRE_BROWSER=1, which turns that skip into a failure.
CHARLM_CHROMIUM points the test at another browser binary.
"""

import re

import pytest
from conftest import CHROMIUM_ARGS, serve_in_thread


@pytest.fixture()
def base_url(checkpoint_dir):
    """An app that may generate for long (so Stop has a stream to stop) on a loopback port,
    in a thread, for as long as the test runs."""
    from service import create_app

    app = create_app({"CHECKPOINTS": str(checkpoint_dir), "LOAD": "sync", "TESTING": True,
                      "MAX_NEW_TOKENS": 1_000_000, "MAX_PROMPT_CHARS": 200})
    with serve_in_thread(app) as url:
        yield url


def test_playground_in_chromium(chromium, base_url, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 1400})
            page.set_default_timeout(10_000)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(base_url + "/")
            expect(page.locator("#model option")).to_have_count(2)
            expect(page.locator("#curve svg polyline")).to_have_count(1)  # the val history

            page.fill("#prompt", "The king said: ")
            page.fill("#length", "1000000")
            page.fill("#seed", "7")
            page.click("#generate")
            # the stream arrives character by character into the output
            page.wait_for_function(
                "document.querySelectorAll('#output span:not(.prompt)').length > 40")
            page.click("#stop")
            expect(page.locator("#status")).to_have_text(re.compile(r"^stopped after \d+ "))
            expect(page.locator("#generate")).to_be_enabled()
            # and the server stops generating: no request left in flight
            page.wait_for_function("fetch('/info').then(r => r.json())"
                                   ".then(i => i.load.requests === 0)", polling=200)

            # the distribution after the end of the text, then after a character pointed at
            expect(page.locator("#next-chart .row")).to_have_count(10)
            page.hover("#output span[data-i='20']")
            expect(page.locator("#next-context")).to_contain_text("After character 20")
            expect(page.locator("#next-chart .row")).to_have_count(10)
            page.focus("#output")
            page.keyboard.press("Home")
            expect(page.locator("#next-context")).to_contain_text("After character 0")

            # the cell view: every character coloured, cells ranked, gates' saturation drawn
            n_chars = page.locator("#output span").count()
            # the whole text, up to an answer's 1,000,000 values / (2 x 16 x 4) a character
            expect(page.locator("#cell-text span")).to_have_count(min(n_chars, 7812))
            expect(page.locator("#saturation figure")).to_have_count(2 * 3)  # layers x i, f, o
            assert page.locator("#ranking button").count() >= 5
            page.select_option("#layer", "1")
            page.fill("#cell", "3")
            expect(page.locator("#cell-text")).to_have_attribute(
                "aria-label", "The text coloured by layer 2, cell 3")
            colour = page.locator("#cell-text span").first.evaluate(
                "s => getComputedStyle(s).backgroundColor")
            assert colour.startswith("rgba(") or colour.startswith("rgb(")

            shot = tmp_path / "playground.png"
            page.screenshot(path=str(shot), full_page=True)
            print(f"screenshot: {shot}")
            assert shot.stat().st_size > 10_000

            # phone width: one column, nothing wider than the screen
            page.set_viewport_size({"width": 390, "height": 800})
            assert page.evaluate("document.documentElement.scrollWidth") <= 390
            page.screenshot(path=str(tmp_path / "playground-phone.png"), full_page=True)
        finally:
            browser.close()
    assert not errors, errors
