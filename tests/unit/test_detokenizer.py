"""Incremental detokenization on the real Qwen2 tokenizer: pieces never split a UTF-8 character."""

from __future__ import annotations

import pytest

from qwq.engine.detokenizer import IncrementalDetokenizer

TEXTS = [
    "Plain ASCII text, with punctuation!",
    "中文文本：你好，世界。数学公式 ∑∫∂",
    "Fraktur 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 and emoji 😀🎉👩‍👩‍👧‍👦 and 🇯🇵",
    "Mixed ünïcödé — “quotes” … ﬁn",
]


@pytest.mark.parametrize("text", TEXTS)
def test_pieces_are_whole_characters_and_join_to_the_text(model, text):
    tokenizer = model.tokenizer
    ids = tokenizer.encode(text)
    detokenizer = IncrementalDetokenizer(tokenizer)
    pieces = [detokenizer.push(i) for i in ids] + [detokenizer.flush()]
    assert all("\ufffd" not in piece for piece in pieces)
    assert "".join(pieces) == tokenizer.decode(ids) == text


def test_text_really_splits_inside_characters(model):
    """The fraktur text must contain tokens that are parts of a character, or the test above proves nothing."""
    tokenizer = model.tokenizer
    ids = tokenizer.encode(TEXTS[2])
    assert any("\ufffd" in tokenizer.decode([i]) for i in ids)


def test_special_tokens_are_skipped_and_incomplete_bytes_flush(model):
    tokenizer = model.tokenizer
    detokenizer = IncrementalDetokenizer(tokenizer)
    im_end = tokenizer.token_id("<|im_end|>")
    partial = next(i for i in tokenizer.encode("𝔘") if "\ufffd" in tokenizer.decode([i]))
    assert detokenizer.push(tokenizer.encode("ok")[0]) == "ok"
    assert detokenizer.push(im_end) == ""
    assert detokenizer.push(partial) == ""
    assert detokenizer.flush() == "\ufffd"
