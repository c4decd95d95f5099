"""Reasoning/answer splitting: every way of cutting a reply into streamed pieces gives the whole-text split."""

from __future__ import annotations

import pytest

from qwq.engine.reasoning_split import ReasoningFormat, ReasoningSplitter, detect_format, split_reasoning

CASES = [
    # (style, starts_in_reasoning, reply, reasoning, answer)
    ("think", False, "<think>\nLet me add: 2+2=4.\n</think>\n\nIt is 4.", "Let me add: 2+2=4.\n", "It is 4."),
    ("think", True, "2+2 is 4, check: yes.</think>\n\n**4**", "2+2 is 4, check: yes.", "**4**"),
    ("think", False, "Plain text with a </think> inside.", "", "Plain text with a </think> inside."),
    ("think", False, "<thinking is not the tag", "", "<thinking is not the tag"),
    ("think", True, "still thinking when it ran out of tokens", "still thinking when it ran out of tokens", ""),
    ("think", False, "<think>a < b and </thin are not the tag</think>ok", "a < b and </thin are not the tag", "ok"),
    (
        "qwq-preview",
        True,
        "So x = 3 works.\n\n**Final Answer**\n\n\\[ \\boxed{3} \\]",
        "So x = 3 works.\n\n",
        "\\[ \\boxed{3} \\]",
    ),
    ("qwq-preview", True, "Reasoning only, cut off", "Reasoning only, cut off", ""),
    ("qwq-preview", True, "Hmm.\n**Final Answer:** 42", "Hmm.\n", "42"),
    ("qwq-preview", True, "6 x 7.\n\n**Final Answer: 42**", "6 x 7.\n\n", "**42**"),  # answer inside the bold
    ("qwq-preview", True, "Hmm.\n**Final Answer**: 42", "Hmm.\n", "42"),
    ("qwq-preview", True, "Ran out at **Final Answer**", "Ran out at ", ""),
    ("none", False, "<think>kept</think>as is", "", "<think>kept</think>as is"),
]


@pytest.mark.parametrize(("style", "starts", "reply", "reasoning", "answer"), CASES)
def test_whole_reply(style, starts, reply, reasoning, answer):
    split = split_reasoning(reply, style, starts)
    assert (split.reasoning, split.answer) == (reasoning, answer)


@pytest.mark.parametrize(("style", "starts", "reply", "reasoning", "answer"), CASES)
@pytest.mark.parametrize("piece", [1, 2, 3, 5])
def test_streamed_in_pieces_equals_whole(style, starts, reply, reasoning, answer, piece):
    splitter = ReasoningSplitter(style, starts)
    got_reasoning, got_answer = [], []
    for start in range(0, len(reply), piece):
        delta = splitter.push(reply[start : start + piece])
        got_reasoning.append(delta.reasoning)
        got_answer.append(delta.answer)
    tail = splitter.flush()
    assert "".join(got_reasoning) + tail.reasoning == reasoning
    assert "".join(got_answer) + tail.answer == answer


def test_unknown_style_is_refused():
    with pytest.raises(ValueError, match="reasoning style"):
        ReasoningSplitter("xml")


def test_detect_format_of_a_plain_chat_model(model):
    # Qwen2.5-Coder: no </think> token, plain replies: nothing to budget or cue
    assert detect_format(model.tokenizer) == ReasoningFormat("think", False, False)
