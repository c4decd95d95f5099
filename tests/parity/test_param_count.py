"""The QwQ-32B-Preview preset has exactly the parameters transformers' Qwen2ForCausalLM has."""

from __future__ import annotations

import torch
from transformers import Qwen2Config
from transformers import Qwen2ForCausalLM as HFQwen2

import qwq
from qwq.presets import QWQ_32B_PREVIEW


def test_qwq_32b_preview_parameter_count_matches_transformers():
    model = qwq.load("qwq-32b-preview", device="meta")
    config = model.config
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == (64, 5120, 40)
    assert (config.num_key_value_heads, config.intermediate_size, config.vocab_size) == (8, 27648, 152064)
    assert (config.rope_theta, config.max_position_embeddings, config.rms_norm_eps) == (1e6, 32768, 1e-5)
    assert config.tie_word_embeddings is False
    with torch.device("meta"):
        reference = HFQwen2(Qwen2Config(**config.to_hf_dict()))
    total = model.num_parameters()
    non_embedding = model.num_parameters(exclude_embeddings=True)
    assert total == reference.num_parameters()
    assert total - non_embedding == 2 * config.vocab_size * config.hidden_size
    print(f"\nQwQ-32B-Preview parameters: total {total:,}, non-embedding {non_embedding:,}")
    assert QWQ_32B_PREVIEW.generation.eos_token_ids == (151645, 151643)


def test_preset_without_meta_device_is_refused():
    import pytest

    with pytest.raises(qwq.ModelLoadError, match="preset without local weights"):
        qwq.load("qwq-32b-preview", device="cpu")
