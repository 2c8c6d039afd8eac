"""The one stop-string policy: exclusive stops (the library, OpenAI) and inclusive ones (TGI)."""

from charlm.generate import Stops, Token


def feed(stops: Stops, text: str) -> tuple[str, bool, str]:
    """Released text, whether a stop string ended the run, and what is still held."""
    out = ""
    for ch in text:
        released, stopped = stops.push(Token(ch, 0.0))
        out += "".join(t.char for t in released)
        if stopped:
            return out, True, ""
    return out, False, "".join(t.char for t in stops.held)


def test_exclusive_stops_leave_the_stop_string_out_and_never_release_part_of_it():
    assert feed(Stops(["\n\n"]), "ab\ncd\n\nef") == ("ab\ncd", True, "")
    # "xy" might still become "xyz": held back until it cannot
    assert feed(Stops(["xyz"]), "axy") == ("a", False, "xy")
    assert feed(Stops(["xyz"]), "axyq") == ("axyq", False, "")
    # two stop strings ending at once: the text ends at the earlier start
    assert feed(Stops(["cd", "bcd"]), "abcd") == ("a", True, "")


def test_inclusive_stops_keep_the_stop_string_and_hold_nothing_back():
    assert feed(Stops(["\n\n"], inclusive=True), "ab\ncd\n\nef") == ("ab\ncd\n\n", True, "")
    assert feed(Stops(["xyz"], inclusive=True), "axy") == ("axy", False, "")
    # the tail it keeps is long enough for the longest stop string
    assert feed(Stops(["q", "abcde"], inclusive=True), "xxabcdey") == ("xxabcde", True, "")


def test_flush_gives_back_what_was_held():
    s = Stops(["xyz"])
    assert feed(s, "abxy") == ("ab", False, "xy")
    assert "".join(t.char for t in s.flush()) == "xy" and not s.held
