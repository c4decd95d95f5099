"""The engine against HF transformers' `generate` on the real Qwen2.5-Coder-0.5B GGUF (float32): greedy and
repetition-penalty decoding, token for token.

All of qwq's runs share one engine batch (every prompt a different length), so this also checks the batched
numerics against an independent implementation; HF runs each prompt alone, unpadded.
"""

from __future__ import annotations

import pytest
import torch

from qwq.engine.engine import Engine

NEW_TOKENS = 24
SETTINGS = {"greedy": {}, "repetition_penalty": {"repetition_penalty": 1.3}}


def _texts(model) -> list[str]:
    chat = model.tokenizer.apply_chat_template([{"role": "user", "content": "Name three sorting algorithms."}])
    return ["def quicksort(arr):", chat, "The quick brown fox jumps over the lazy dog. The quick brown fox"]


def _prompts(model) -> list[list[int]]:
    return [model.tokenizer.encode(text) for text in _texts(model)]


def _hf_generate(hf_model, ids: list[int], eos: list[int], **settings) -> list[int]:
    with torch.inference_mode():
        out = hf_model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=NEW_TOKENS,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=eos[-1],
            **settings,
        )
    return out[0, len(ids) :].tolist()


@pytest.fixture(scope="module")
def engine_runs(model) -> dict[tuple[int, str], list[int]]:
    """qwq's output ids for every (prompt, setting), all in one engine batch."""
    prompts = _prompts(model)
    engine = Engine(model.network, model.tokenizer, context_length=128, max_batch=len(prompts) * len(SETTINGS))
    keys, requests = [], []
    for index, ids in enumerate(prompts):
        for name, settings in SETTINGS.items():
            keys.append((index, name))
            requests.append(model.request(ids, model.params(max_tokens=NEW_TOKENS, temperature=0, **settings)))
    ids_of = {r.request_id: [] for r in requests}
    finished = set()
    engine.add(requests)
    for _ in range(10 * NEW_TOKENS):
        if not engine.has_work:
            break
        for output in engine.step():
            ids_of[output.request_id][output.start :] = output.new_ids
            if output.finish_reason is not None:
                assert output.finish_reason in ("stop", "length"), output
                finished.add(output.request_id)
    assert finished == set(ids_of)
    return {key: ids_of[r.request_id] for key, r in zip(keys, requests, strict=True)}


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_engine_matches_hf_generate(model, hf_model, hf_tokenizer, engine_runs, setting):
    eos = list(model.generation_defaults.eos_token_ids)
    for index, (text, ids) in enumerate(zip(_texts(model), _prompts(model), strict=True)):
        assert ids == hf_tokenizer.encode(text, add_special_tokens=False)
        expected = _hf_generate(hf_model, ids, eos, **SETTINGS[setting])
        ours = engine_runs[(index, setting)]
        assert ours == expected, f"prompt {index} ({setting}): qwq {ours} != HF {expected}"
        assert len(ours) == NEW_TOKENS or ours[-1] in eos


def test_the_repetition_penalty_changes_the_output(engine_runs):
    """So that the comparison above could fail if the penalty were dropped or applied as plain greedy."""
    changed = [i for i in range(3) if engine_runs[(i, "greedy")] != engine_runs[(i, "repetition_penalty")]]
    assert changed, "repetition_penalty=1.3 changed no prompt's continuation"
