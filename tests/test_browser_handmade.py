"""The playground's cell view on the shipped handmade Reber LSTM, in a real headless Chromium:
a unit's name beside its number, and its eraser (forget gate) colouring the text."""

import re
import shutil
from pathlib import Path

import pytest
from conftest import CHROMIUM_ARGS, serve_in_thread

from charlm import handmade

SHIPPED = Path(__file__).resolve().parents[1] / "checkpoints"


@pytest.fixture()
def base_url(tmp_path, checkpoint_dir):
    """The fixtures' default model and both handmade ones, served on a loopback port."""
    from service import create_app

    served = tmp_path / "served"
    served.mkdir()
    shutil.copy(checkpoint_dir / "default.npz", served)
    for name in ("handmade-reber.npz", "handmade-embedded-reber.npz"):
        shutil.copy(SHIPPED / name, served)
    app = create_app({"CHECKPOINTS": str(served), "LOAD": "sync", "TESTING": True})
    with serve_in_thread(app) as url:
        yield url


def level(colour: str) -> float:
    """The value a cell-view background shows: +1 at the scale's red (230, 80, 60), -1 at its
    blue (80, 130, 240), 0 at white, read back from the computed rgb()."""
    r, g, b = (int(x) for x in re.findall(r"\d+", colour)[:3])
    return (255 - g) / 175 if r >= b else -(255 - r) / 175


def test_a_handmade_unit_in_the_cell_view(chromium, base_url, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    errors: list[str] = []
    names = handmade.build()[1]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1400})
            page.set_default_timeout(15_000)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text)
                    if m.type == "error" and "422" not in m.text else None)
            page.goto(base_url + "/")
            expect(page.locator("#model option")).to_have_count(3)
            page.select_option("#model", "handmade-reber")
            page.fill("#prompt", "\nBTSSXXTVVE\nBPTTVPXVPSE\n")
            page.fill("#temperature", "0.5")
            page.fill("#length", "60")
            page.fill("#seed", "3")
            page.click("#generate")
            expect(page.locator("#status")).to_have_text(re.compile(r"^done: 60 characters"))
            text = page.evaluate("state.text")
            assert len(text) == 24 + 60 and text.startswith("\nBTSSXXTVVE\n")

            # unit 3 is state 3; coloured by its eraser, which keeps it only on T
            expect(page.locator("#cell-text span")).to_have_count(len(text))
            page.fill("#cell", "3")
            page.select_option("#show", "f")
            expect(page.locator("#cell-name")).to_have_text(names[3])
            expect(page.locator("#cell-text")).to_have_attribute(
                "aria-label", f"The text coloured by layer 1, cell 3 ({names[3]}), "
                              "forget gate f: the eraser (0 erases)")
            shown = page.locator("#cell-text span").evaluate_all(
                "spans => spans.map(s => [s.textContent, getComputedStyle(s).backgroundColor])")
            assert "".join(ch for ch, _ in shown) == text
            for ch, colour in shown:
                v = level(colour)
                assert (v > 0.98) if ch == "T" else (abs(v) < 0.01), (ch, colour)
            page.locator("#cells").scroll_into_view_if_needed()
            shot = tmp_path / "handmade-eraser.png"
            page.locator("#cells").screenshot(path=str(shot))
            print(f"screenshot: {shot}")
            assert shot.stat().st_size > 10_000

            # its memory, tanh(c): on (tanh 1) exactly in state 3, after P, T, X
            page.select_option("#show", "tanh_c")
            expect(page.locator("#cell-text")).to_have_attribute(
                "aria-label", f"The text coloured by layer 1, cell 3 ({names[3]})")
            # the embedded grammar's memory: +1 (red) from a T branch to its end, -1 after P
            memory = handmade.build(embedded=True)[1][-1]
            page.select_option("#model", "handmade-embedded-reber")
            page.fill("#prompt", "\nBTBTSSXXTVVETE\nBPBPVVEPE\nBPBTXSEPE\n")
            page.fill("#length", "40")
            page.click("#generate")
            expect(page.locator("#status")).to_have_text(re.compile(r"^done: 40 characters"))
            page.fill("#cell", "12")
            expect(page.locator("#cell-name")).to_have_text(memory)
            shown = page.locator("#cell-text span").evaluate_all(
                "spans => spans.map(s => [s.textContent, getComputedStyle(s).backgroundColor])")
            text = "".join(ch for ch, _ in shown)
            pos = 0
            for line in text.split("\n")[1:-1]:
                for k in range(pos + 3, pos + len(line) + 1):  # from the second letter on
                    v = level(shown[k][1])
                    assert abs(v) > 0.7, (line, k)
                    assert (v > 0) if line[1] == "T" else (v < 0), (line, shown[k])
                pos += len(line) + 1
            page.locator("#cells").screenshot(path=str(tmp_path / "handmade-memory.png"))

            # a model without names shows none
            page.select_option("#model", "default")
            page.fill("#prompt", "The ")
            page.click("#generate")
            expect(page.locator("#status")).to_have_text(re.compile(r"^done: "))
            expect(page.locator("#cell-name")).to_have_text("")
        finally:
            browser.close()
    assert not errors, errors
