"""The playground in a real headless Chromium, at 1280 and 390 pixels wide: the cell view reads
the whole text and says what it shows, waits without stale content, and keeps text readable on
every colour of its scale; the training curve is legible on a phone; the next-character chart
sits by the text you tap; errors are in the page's words and clear on a new submit.

Skips without Chromium (or playwright) like tests/test_browser.py, failing under
CHARLM_REQUIRE_BROWSER=1.
"""

import json
import math
import re

import numpy as np
import pytest
from conftest import CHARS, CHROMIUM_ARGS, make_checkpoint, serve_in_thread
from test_playground import reference_activations

WINDOW = 50  # characters an /activations answer holds here (see base_url)
WHITE, RED, BLUE = (255, 255, 255), (230, 80, 60), (80, 130, 240)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The fixtures' default model, "small" (a smaller vocabulary), and "curve": the default
    model with a training run's loss history."""
    from charlm.checkpoint import load_checkpoint, save_checkpoint

    d = tmp_path_factory.mktemp("served")
    make_checkpoint(d / "default.npz", CHARS, seed=1)
    make_checkpoint(d / "small.npz", list("\n abcdefgh"), seed=2, n_hidden=12)
    ck = load_checkpoint(d / "default.npz")
    steps = range(10, 4510, 10)
    train = [{"step": s, "train_loss": 1.2 + 2.4 * math.exp(-s / 300)} for s in steps]
    val = [{"step": s, "val_loss": 1.47 + 0.5 * math.exp(-s / 800)} for s in range(500, 4501, 500)]
    model = ck.model()
    save_checkpoint(d / "curve.npz", model, ck.vocab, {"step": 4500, "best_val_loss": 1.47,
                                                       "train_history": train,
                                                       "val_history": val})
    return d


@pytest.fixture()
def base_url(served):
    from service import create_app

    # 2 layers x 16 cells x 4 quantities: 128 values a character, WINDOW characters an answer
    app = create_app({"CHECKPOINTS": str(served), "LOAD": "sync", "TESTING": True,
                      "MAX_PROMPT_CHARS": 200, "MAX_NEW_TOKENS": 500,
                      "MAX_ACTIVATION_VALUES": 128 * WINDOW})
    with serve_in_thread(app) as url:
        yield url


@pytest.fixture()
def browser(chromium):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


def open_page(browser, url, width, errors, phone=False):
    from playwright.sync_api import expect

    ctx = browser.new_context(viewport={"width": width, "height": 844 if phone else 1000},
                              is_mobile=phone, has_touch=phone)
    page = ctx.new_page()
    page.set_default_timeout(15_000)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url + "/")
    expect(page.locator("#model option")).to_have_count(3)
    return page


def generate(page, prompt="The ", length=120, seed=1):
    from playwright.sync_api import expect

    page.fill("#prompt", prompt)
    page.fill("#length", str(length))
    page.fill("#seed", str(seed))
    page.click("#generate")
    expect(page.locator("#status")).to_have_text(f"done: {length} characters")
    return page.evaluate("state.text")


def rgb(colour: str) -> tuple[int, int, int]:
    r, g, b = (int(x) for x in re.findall(r"\d+", colour)[:3])
    return r, g, b


def luminance(c: tuple[int, int, int]) -> float:
    """WCAG 2 relative luminance of an sRGB colour."""
    def linear(v: int) -> float:
        s = v / 255
        return s / 12.92 if s <= 0.04045 else ((s + 0.055) / 1.055) ** 2.4
    r, g, b = (linear(v) for v in c)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    hi, lo = sorted((luminance(a), luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def expected_colour(v: float) -> np.ndarray:
    end = np.array(RED if v >= 0 else BLUE)
    return np.array(WHITE) + (end - np.array(WHITE)) * min(abs(v), 1.0)


def shown(page) -> list[tuple[str, str]]:
    return page.locator("#cell-text span").evaluate_all(
        "spans => spans.map(s => [s.textContent, getComputedStyle(s).backgroundColor])")


def test_the_cell_view_reads_the_whole_text_and_says_what_it_shows(browser, base_url, served):
    from playwright.sync_api import expect

    errors: list[str] = []
    page = open_page(browser, base_url, 1280, errors)
    assert page.locator("#analyse").count() == 0  # the view follows the text by itself
    text = generate(page)
    n = len(text)
    assert n == 124
    # the last WINDOW characters, coloured as the whole text read from its start colours them
    expect(page.locator("#cell-text span")).to_have_count(WINDOW)
    expect(page.locator("#cells-window")).to_contain_text(
        f"Characters {n - WINDOW + 1} to {n} of {n}")
    expect(page.locator("#cells-window")).to_contain_text("read the whole text from its first")
    expect(page.locator("#cells-window")).to_contain_text(f"at most {WINDOW} characters")
    assert page.locator("#window-label").is_visible()
    ref = reference_activations(served / "default.npz", text)[0]["tanh_c"][:, 0]

    def check(start):
        spans = shown(page)
        assert "".join(ch for ch, _ in spans) == text[start:start + WINDOW]
        for t, (_, colour) in enumerate(spans):
            # int8 values: within a channel level or two of the exact value's colour
            diff = np.abs(np.array(rgb(colour)) - expected_colour(ref[start + t]))
            assert diff.max() <= 2, (start + t, colour, ref[start + t])
    check(n - WINDOW)

    # the window moves; while its answer is on the way, nothing of the old one shows
    held = []
    page.route("**/activations", lambda route: held.append(route))
    page.fill("#window-start", "1")
    page.locator("#window-start").dispatch_event("change")
    expect(page.locator("#cells")).to_have_attribute("aria-busy", "true")
    expect(page.locator("#cell-text")).to_have_text(re.compile(r"^Reading 124 characters"))
    assert page.locator("#cell-text span").count() == 0
    assert page.locator("#ranking *").count() == 0 and page.locator("#saturation *").count() == 0
    assert page.locator("#cells-window").text_content() == ""
    page.wait_for_function("true")
    assert len(held) == 1
    held[0].continue_()
    page.unroute("**/activations")
    expect(page.locator("#cells")).to_have_attribute("aria-busy", "false")
    expect(page.locator("#cells-window")).to_contain_text(f"Characters 1 to {WINDOW} of {n}")
    check(0)

    # a short text is shown whole, and said to be
    generate(page, prompt="He", length=20)
    expect(page.locator("#cell-text span")).to_have_count(22)
    expect(page.locator("#cells-window")).to_have_text(
        'All 22 characters, read by model “default” from the first one: the state the text was '
        "written in.")
    assert not page.locator("#window-label").is_visible()
    # while a new text is written, the old one's analysis is gone
    page.route("**/generate", lambda route: held.append(route))
    page.click("#generate")
    expect(page.locator("#cell-text")).to_have_text(
        "The cell view reads the text when it is written.")
    assert page.locator("#cell-text span").count() == 0
    held[-1].abort()
    page.unroute("**/generate")
    assert not errors, errors


def test_text_is_readable_on_every_colour_of_the_scale(browser, base_url):
    from playwright.sync_api import expect

    # the formula, against known figures: black on white is 21:1; the old scale's full red
    # under the page's old text colour was 4.4:1, which this test exists to catch
    assert contrast((0, 0, 0), (255, 255, 255)) == pytest.approx(21.0)
    assert contrast((220, 60, 40), (0x1D, 0x1F, 0x23)) < 4.5
    errors: list[str] = []
    page = open_page(browser, base_url, 1280, errors)
    generate(page)
    expect(page.locator("#cell-text span")).to_have_count(WINDOW)
    text_colour = rgb(page.locator("#cell-text").evaluate("e => getComputedStyle(e).color"))
    scale = page.evaluate("Array.from({length: 2001}, (_, k) => cellColour(-1 + k / 1000))")
    ratios = [contrast(rgb(c), text_colour) for c in scale]
    print(f"cell view: lowest text contrast on the scale {min(ratios):.2f}:1")
    assert min(ratios) >= 4.5
    assert rgb(scale[0]) == BLUE and rgb(scale[1000]) == WHITE and rgb(scale[-1]) == RED
    # and on what the view really painted, for the values and for a gate
    for what in ("tanh_c", "f"):
        page.select_option("#show", what)
        for ch, colour in shown(page):
            span_text = text_colour
            assert contrast(rgb(colour), span_text) >= 4.5, (ch, colour)
    # the legend's coloured words on the white section
    for sel in (".neg", ".pos"):
        c = rgb(page.locator(sel).first.evaluate("e => getComputedStyle(e).color"))
        assert contrast(c, WHITE) >= 4.5, sel
    assert not errors, errors


def ticks(page, axis: str) -> list[float]:
    return [float(t.replace(",", "")) for t in
            page.locator(f"#curve text.tick.{axis}").all_text_contents()]


def is_nice(values: list[float]) -> bool:
    """Evenly spaced by 1, 2 or 5 times a power of ten, each a multiple of the step."""
    steps = np.diff(values)
    step = steps[0]
    mantissa = step / 10 ** math.floor(math.log10(step))
    return (np.allclose(steps, step) and any(math.isclose(mantissa, m) for m in (1, 2, 5))
            and all(math.isclose(v / step, round(v / step), abs_tol=1e-6) for v in values))


@pytest.mark.parametrize("width", [1280, 390])
def test_the_training_curve(browser, base_url, width):
    from playwright.sync_api import expect

    errors: list[str] = []
    page = open_page(browser, base_url, width, errors, phone=width < 900)
    page.select_option("#model", "curve")
    expect(page.locator("#curve polyline")).to_have_count(2)
    # a legend with a swatch of each line's colour
    expect(page.locator("#legend li")).to_have_text(["train loss", "validation loss"])
    swatches = page.locator("#legend li line").evaluate_all(
        "ls => ls.map(l => l.getAttribute('stroke'))")
    lines = page.locator("#curve polyline").evaluate_all(
        "ls => ls.map(l => l.getAttribute('stroke'))")
    assert swatches == lines and len(set(lines)) == 2
    axis = page.locator("#curve text.axis").all_text_contents()
    assert axis == ["training step", "loss (nats per character)"]
    # round ticks that cover the data
    y, x = ticks(page, "y"), ticks(page, "x")
    assert is_nice(y) and is_nice(x), (y, x)
    assert y[0] <= 1.2 and y[-1] >= 3.6 * 0.999 and 3 <= len(y) <= 10
    assert x[0] <= 10 and x[-1] <= 4500 and len(x) >= 3
    # drawn at the size it is shown: 12 px text, whatever the width; labels apart
    geo = page.evaluate("""() => {
        const svg = document.querySelector('#curve svg');
        const box = svg.getBoundingClientRect();
        const texts = [...svg.querySelectorAll('text')].map(t => {
            const r = t.getBoundingClientRect();
            return [parseFloat(getComputedStyle(t).fontSize), r.left, r.right, r.height]; });
        return {shown: box.width, drawn: svg.width.baseVal.value, texts,
                page: document.documentElement.scrollWidth}; }""")
    assert geo["shown"] == pytest.approx(geo["drawn"]) and geo["page"] <= width
    assert all(size >= 12 and height >= 11 for size, _, _, height in geo["texts"]), geo["texts"]
    xs = page.locator("#curve text.tick.x").evaluate_all(
        "ts => ts.map(t => { const r = t.getBoundingClientRect(); return [r.left, r.right]; })")
    assert all(a[1] + 4 <= b[0] for a, b in zip(xs, xs[1:], strict=False)), xs
    assert not errors, errors


def test_on_a_phone_the_chart_is_beside_the_text_you_tap(browser, base_url, tmp_path):
    from playwright.sync_api import expect

    errors: list[str] = []
    page = open_page(browser, base_url, 390, errors, phone=True)
    text = generate(page, length=300, seed=2)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    for k in (5, len(text) // 2, len(text) - 3):
        span = page.locator(f"#output span[data-i='{k}']")
        span.scroll_into_view_if_needed()
        span.tap()
        expect(page.locator("#next-context")).to_contain_text(f"After character {k} ")
        expect(page.locator("#next-chart")).to_have_attribute("aria-busy", "false")
        geo = page.evaluate(f"""() => {{
            const r = e => {{ const b = e.getBoundingClientRect(); return [b.top, b.bottom]; }};
            return {{span: r(document.querySelector("#output span[data-i='{k}']")),
                     chart: r(document.getElementById('next-chart')),
                     height: innerHeight}}; }}""")
        # both on the screen at once, the chart below the text
        assert geo["span"][0] >= 0 and geo["chart"][1] <= geo["height"], geo
        assert geo["chart"][0] > geo["span"][1], geo
    page.screenshot(path=str(tmp_path / "phone-tap.png"))
    assert not errors, errors


def test_on_a_wide_screen_the_chart_is_beside_the_text(browser, base_url):
    errors: list[str] = []
    page = open_page(browser, base_url, 1280, errors)
    generate(page)
    out = page.locator("#output").bounding_box()
    chart = page.locator("#next-chart").bounding_box()
    assert chart["x"] >= out["x"] + out["width"] and chart["y"] < out["y"] + out["height"]
    assert not errors, errors


def answer(code: int, body: dict):
    """A route handler answering every request with code and the JSON body."""
    return lambda route: route.fulfill(status=code, content_type="application/json",
                                       body=json.dumps(body))


def test_errors_are_in_plain_words_and_clear(browser, base_url):
    from playwright.sync_api import expect

    errors: list[str] = []
    page = open_page(browser, base_url, 1280, errors)
    status = page.locator("#status")
    # a character the model does not know, said before asking the server
    page.fill("#prompt", "The 中 king")
    page.click("#generate")
    expect(status).to_have_text(
        "The prompt has characters the model “default” does not know: “中”. Remove them, or pick "
        "another model.")
    expect(status).to_have_class("error")
    # the browser's own check blocks the next submit: the old error goes, the field is named
    page.fill("#prompt", "The ")
    page.fill("#temperature", "7")
    page.click("#generate")
    expect(status).to_have_text(re.compile(r"^Temperature: "))
    assert "中" not in status.text_content()
    page.fill("#temperature", "0.8")
    # what only the server refuses, in the page's words
    for code, body, want in (
            (422, {"error": "`parameters.top_p` must be in (0.0, 1.0], got 2",
                   "error_type": "validation"}, "Top-p must be between 0.0 and 1.0 (it is 2)."),
            (422, {"error": "`inputs` has 300 characters; the limit is 200",
                   "error_type": "validation"},
             "The prompt has 300 characters; the most the server takes is 200."),
            (429, {"error": "the server is at its limit of 8 concurrent requests",
                   "error_type": "overloaded"},
             "The server is busy with other requests; try again in a moment.")):
        page.route("**/generate", answer(code, body))
        page.click("#generate")
        expect(status).to_have_text(want)
        page.unroute("**/generate")
    # and a good submit clears the last error
    generate(page, length=10)
    expect(status).not_to_have_class("error")
    # another model that does not know the text's characters: the views say so plainly
    page.select_option("#model", "small")
    unknown = re.compile(r"^The text has characters the model “small” does not know: 'T")
    expect(page.locator("#cell-text")).to_have_text(unknown)
    expect(page.locator("#next-chart")).to_have_text(unknown)
    assert page.locator("#cell-text span").count() == 0
    texts = " ".join(page.locator(s).text_content() for s in ("#status", "#cell-text",
                                                              "#next-chart"))
    assert "`" not in texts and "inputs" not in texts
    assert not errors, errors
