"""Stop strings across streamed pieces."""

from __future__ import annotations

from qwq.engine.stop_strings import StopStringMatcher


def _run(pieces: list[str], stop: list[str]) -> tuple[str, bool]:
    matcher = StopStringMatcher(stop)
    out = "".join(matcher.push(p) for p in pieces)
    return out + matcher.flush(), matcher.stopped


def test_stop_string_inside_one_piece():
    assert _run(["Hello STOP world"], ["STOP"]) == ("Hello ", True)


def test_stop_string_split_across_pieces_is_held_back():
    matcher = StopStringMatcher(["</answer>"])
    assert matcher.push("The answer is 4</an") == "The answer is 4"
    assert matcher.push("swer> trailing") == ""
    assert matcher.stopped


def test_partial_match_that_fails_is_released():
    assert _run(["a <", "/b", "> c"], ["</answer>"]) == ("a </b> c", False)


def test_earliest_of_several_stop_strings_wins():
    assert _run(["xx", "yEND", "zSTOP"], ["STOP", "END"]) == ("xxy", True)


def test_no_stop_strings_passes_everything():
    assert _run(["a", "b", "c"], []) == ("abc", False)


def test_text_held_at_the_end_is_flushed():
    assert _run(["value: </ans"], ["</answer>"]) == ("value: </ans", False)
