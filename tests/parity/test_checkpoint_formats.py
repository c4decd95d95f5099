"""Every GGUF tensor type Qwen GGUFs use, and HF safetensors directories (single and sharded), load into
qwq with the same logits transformers gets from the same file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from gguf import GGMLQuantizationType as QType
from transformers import AutoModelForCausalLM

import qwq

from tiny_checkpoints import write_gguf, write_hf_dir

TYPES = ["F32", "F16", "BF16", "Q8_0", "Q5_0", "Q5_1", "Q4_0", "Q4_1", "Q4_K", "Q5_K", "Q6_K"]
TEXT = "hello there, tell me <|im_end|> more"


def _reference_logits(directory: Path, ids: list[int], gguf_file: str | None = None) -> torch.Tensor:
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    reference = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, **kwargs).eval()
    with torch.inference_mode():
        return reference(torch.tensor([ids])).logits[0]


@pytest.mark.parametrize("type_name", TYPES)
def test_gguf_tensor_type_matches_transformers(tmp_path, type_name):
    path = write_gguf(tmp_path / f"tiny-{type_name}.gguf", QType[type_name])
    model = qwq.load(path, dtype="float32")  # dequantized (a quantized file's own bits are its default)
    ids = model.tokenizer.encode(TEXT)
    expected = _reference_logits(tmp_path, ids, path.name)
    assert (model.logits(ids) - expected).abs().max().item() < 1e-4


def test_gguf_without_output_tensor_ties_embeddings(tmp_path):
    path = write_gguf(tmp_path / "tied.gguf", QType.Q8_0, tied=True)
    model = qwq.load(path, dtype="float32")
    assert model.config.tie_word_embeddings
    assert model.network.lm_head.weight is model.network.model.embed_tokens.weight
    ids = model.tokenizer.encode(TEXT)
    assert (model.logits(ids) - _reference_logits(tmp_path, ids, path.name)).abs().max().item() < 1e-4


@pytest.mark.parametrize("shard", [None, "300KB"], ids=["single-file", "sharded"])
def test_hf_safetensors_directory_matches_transformers(tmp_path, shard):
    directory = write_hf_dir(tmp_path / "hf", write_gguf(tmp_path / "src.gguf", QType.F16), max_shard_size=shard)
    assert (directory / "model.safetensors.index.json").is_file() == (shard is not None)
    model = qwq.load(directory)
    ids = model.tokenizer.encode(TEXT)
    assert (model.logits(ids) - _reference_logits(directory, ids)).abs().max().item() < 1e-4
    eos = json.loads((directory / "generation_config.json").read_text())["eos_token_id"]
    assert model.generation_defaults.eos_token_ids == ((eos,) if isinstance(eos, int) else tuple(eos))


def test_bfloat16_load_keeps_bfloat16_weights(tmp_path):
    path = write_gguf(tmp_path / "tiny.gguf", QType.Q8_0)
    full, half = qwq.load(path, dtype="float32"), qwq.load(path, dtype="bfloat16")
    assert half.dtype == torch.bfloat16
    ids = full.tokenizer.encode(TEXT)
    assert half.logits(ids).dtype == torch.float32
    assert torch.equal(half.logits(ids)[-1].argmax(), full.logits(ids)[-1].argmax())
