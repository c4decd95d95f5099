"""qwq's Qwen2 against transformers' `Qwen2ForCausalLM` on small random configs, same weights, float32."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import Qwen2Config
from transformers import Qwen2ForCausalLM as HFQwen2

from qwq.config import ModelConfig
from qwq.model.qwen2 import Qwen2ForCausalLM

CONFIGS = {
    "mha-untied": dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False),
    "gqa2-tied": dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
    "gqa7-odd": dict(hidden_size=56, num_attention_heads=7, num_key_value_heads=1, intermediate_size=77, vocab_size=97),
    "gqa2-headdim": dict(
        hidden_size=48, num_attention_heads=6, num_key_value_heads=3, intermediate_size=50, vocab_size=131
    ),
}
BASE = dict(
    vocab_size=113,
    intermediate_size=96,
    num_hidden_layers=3,
    max_position_embeddings=128,
    rms_norm_eps=1e-6,
    rope_theta=10000.0,
    tie_word_embeddings=False,
)


def make_pair(overrides: dict, seed: int = 0) -> tuple[Qwen2ForCausalLM, HFQwen2]:
    config = ModelConfig(**{**BASE, **overrides})
    torch.manual_seed(seed)
    reference = HFQwen2(Qwen2Config(**config.to_hf_dict())).eval()
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.normal_(0.0, 0.2)
    ours = Qwen2ForCausalLM(config).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    return ours, reference


@pytest.mark.parametrize("name", CONFIGS)
def test_logits_match_transformers(name):
    ours, reference = make_pair(CONFIGS[name])
    ids = torch.randint(0, ours.config.vocab_size, (2, 37))
    with torch.no_grad():
        expected = reference(ids).logits
        got = ours(ids)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() < 1e-4
    if ours.config.tie_word_embeddings:
        assert ours.lm_head.weight is ours.model.embed_tokens.weight


@pytest.mark.parametrize("name", CONFIGS)
def test_cached_decoding_equals_full_recompute(name):
    ours, _ = make_pair(CONFIGS[name], seed=1)
    ids = torch.randint(0, ours.config.vocab_size, (2, 30))
    with torch.no_grad():
        full = ours(ids)
        cache = ours.new_cache(2, 40)

        def step(start: int, end: int) -> torch.Tensor:
            positions = torch.arange(start, end).expand(2, -1)  # (B, T): both rows at the same positions
            return ours(ids[:, start:end], positions, cache)

        chunks = [step(0, 9), step(9, 20)]
        chunks += [step(i, i + 1) for i in range(20, 30)]
    assert (torch.cat(chunks, 1) - full).abs().max().item() < 1e-5


def test_bfloat16_runs_close_to_float32():
    ours, _ = make_pair(CONFIGS["gqa2-tied"])
    ids = torch.randint(0, ours.config.vocab_size, (1, 16))
    with torch.no_grad():
        full = ours(ids)
        low = ours.to(torch.bfloat16)(ids)
    assert low.dtype == torch.bfloat16
    assert (low.float() - full).abs().max().item() < 0.25 * full.abs().max().item()


def test_config_round_trips_through_hf_keys():
    config = ModelConfig(**{**BASE, **CONFIGS["gqa7-odd"]})
    assert ModelConfig.from_hf_dict(config.to_hf_dict()) == config
    hf = Qwen2Config(**config.to_hf_dict())
    for field in dataclasses.fields(ModelConfig):
        if field.name not in ("eos_token_id", "bos_token_id", "rope_theta"):
            assert getattr(hf, field.name) == getattr(config, field.name), field.name
    assert hf.rope_parameters["rope_theta"] == config.rope_theta  # transformers 5 nests it here
