"""The generation API on the real 0.5B model: defaults, limits, stop conditions, streaming, seeds."""

from __future__ import annotations

import pytest

import qwq

QUESTION = "List three primary colors, one per line."


def test_checkpoint_defaults_stop_on_qwen_end_tokens(model):
    assert set(model.generation_defaults.eos_token_ids) == {151645, 151643}


def test_chat_stops_at_end_of_turn(model):
    stream = model.chat(QUESTION, stream=True, temperature=0, max_new_tokens=200)
    text = "".join(stream)
    assert stream.finish_reason == "stop"
    assert stream.token_ids[-1] == 151645
    assert text and "<|im_end|>" not in text
    assert text == model.chat(QUESTION, temperature=0, max_new_tokens=200)


def test_max_new_tokens_gives_length_finish(model):
    stream = model.chat(QUESTION, stream=True, temperature=0, max_new_tokens=5)
    text = "".join(stream)
    assert stream.finish_reason == "length"
    assert len(stream.token_ids) == 5
    assert text == model.tokenizer.decode(stream.token_ids)


def test_stop_string_cuts_the_reply(model):
    full = model.chat(QUESTION, temperature=0, max_new_tokens=60)
    stop = full.split()[1]
    cut = full.index(stop)
    stream = model.chat(QUESTION, stream=True, temperature=0, max_new_tokens=60, stop=[stop])
    assert "".join(stream) == full[:cut]
    assert stream.finish_reason == "stop"


def test_seeded_sampling_is_reproducible(model):
    ids = model.tokenizer.encode("Once upon a time")
    first = model.generate(ids, max_new_tokens=24, temperature=1.0, top_k=0, top_p=1.0, seed=123, ignore_eos=True)
    again = model.generate(ids, max_new_tokens=24, temperature=1.0, top_k=0, top_p=1.0, seed=123, ignore_eos=True)
    other = model.generate(ids, max_new_tokens=24, temperature=1.0, top_k=0, top_p=1.0, seed=321, ignore_eos=True)
    assert first == again
    assert first != other


def test_ignore_eos_runs_to_the_budget(model):
    ids = model.tokenizer.encode(model.tokenizer.apply_chat_template([{"role": "user", "content": "Say OK."}]))
    assert len(model.generate(ids, max_new_tokens=40, temperature=0, ignore_eos=True)) == 40


def test_prompt_plus_budget_beyond_context_is_refused(model):
    ids = model.tokenizer.encode("hello") * 10
    with pytest.raises(
        qwq.ContextLengthError,
        match=r"prompt \(10 tokens\) \+ max_tokens \(32760\) = 32770 exceeds the context of 32768 tokens",
    ):
        model.generate(ids, max_new_tokens=32760)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda m: m.generate([], max_new_tokens=4), "prompt is empty"),
        (lambda m: m.generate([1, 10**7], max_new_tokens=4), "out of range"),
        (lambda m: m.generate([1, 2], max_new_tokens=0), "max_new_tokens must be an integer at least 1"),
        (lambda m: m.generate([1, 2], max_new_tokens=4, temperature=-1), "temperature"),
        (
            lambda m: m.generate([1, 2], max_new_tokens=4, tempreature=0.5),
            r"unknown generation parameters: \['tempreature'\]",
        ),
        (lambda m: m.chat([], max_new_tokens=4), "messages"),
        (lambda m: m.chat("hi", max_new_tokens=4, stop=42), "stop must be"),
        (lambda m: m.chat("hi", max_new_tokens=4, stop=["ok", 3]), "stop must be"),
        (lambda m: m.chat([{"content": "no role"}], max_new_tokens=4), r"messages\[0\]"),
        (lambda m: m.tokenizer.decode([-1]), "out of range"),
    ],
)
def test_bad_requests_name_the_problem(model, call, match):
    with pytest.raises(qwq.InvalidRequestError, match=match):
        call(model)


def test_logits_shape_and_dtype(model):
    ids = model.tokenizer.encode("def add(a, b):")
    logits = model.logits(ids)
    assert logits.shape == (len(ids), model.config.vocab_size)
    assert logits.dtype.is_floating_point and logits.dtype.itemsize == 4


def test_streaming_request_fails_at_the_call_not_mid_stream(model):
    with pytest.raises(qwq.ContextLengthError):
        model.chat("hi", stream=True, max_new_tokens=40000)


def test_integer_like_ids_are_accepted(model):
    import numpy as np
    import torch

    ids = model.tokenizer.encode("print(")
    expected = model.generate(ids, max_new_tokens=3, temperature=0)
    assert model.generate(np.array(ids), max_new_tokens=3, temperature=0) == expected
    assert model.tokenizer.decode(torch.tensor(expected)) == model.tokenizer.decode(expected)
    with pytest.raises(qwq.InvalidRequestError, match="must be integers"):
        model.generate([1.5, 2], max_new_tokens=3)
