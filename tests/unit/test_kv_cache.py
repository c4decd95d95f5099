"""The KV cache's dtype: chosen at load (bfloat16 by default for quantized models), used by whoever allocates a
cache, written rounded by the Python path and read back exactly, and counted by the memory planner and `qwq show`."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from gguf import GGMLQuantizationType as QType

import qwq
from qwq.cli.info import kv_cache_description
from qwq.config import ModelConfig
from qwq.engine.engine import Engine
from qwq.memory import GIB, estimate
from qwq.model.attention import Attention
from qwq.model.kv_cache import KVCache
from qwq.model.layers import RotaryEmbedding, apply_rotary

from tiny_checkpoints import write_gguf


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    return write_gguf(tmp_path_factory.mktemp("kv") / "tiny.gguf", QType.F32)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"quant": "int8"}, torch.bfloat16),
        ({"quant": "int4"}, torch.bfloat16),
        ({"quant": "int4", "kv_cache": "f32"}, torch.float32),
        ({}, torch.float32),
        ({"kv_cache": "bf16"}, torch.bfloat16),
        ({"dtype": "bfloat16"}, torch.bfloat16),
    ],
)
def test_the_engine_allocates_the_cache_in_the_models_kv_dtype(tiny_gguf, options, expected):
    model = qwq.load(tiny_gguf, **options)
    engine = Engine(model.network, model.tokenizer, 32)
    assert all(k.dtype == expected and v.dtype == expected for k, v in zip(engine.cache.k, engine.cache.v, strict=True))
    assert tuple(engine.cache.k[0].shape) == (1, model.config.num_key_value_heads, 32, model.config.head_dim)


@pytest.mark.parametrize("value", ["int8", "bfloat16", "", "F32"])
def test_bad_kv_cache_values_are_named(tiny_gguf, value):
    with pytest.raises(qwq.InvalidRequestError, match=rf"kv_cache '{value}' is not supported; .*'bf16', 'f32'"):
        qwq.load(tiny_gguf, kv_cache=value)


def test_cli_refuses_a_bad_kv_cache_value_by_name(capsys):
    from qwq.cli.main import main

    with pytest.raises(SystemExit):
        main(["run", "qwen2.5-coder:0.5b", "--kv-cache", "f16", "hi"])
    assert "--kv-cache: invalid choice: 'f16'" in capsys.readouterr().err


@pytest.mark.parametrize("quant", ["int8", "int4"])
def test_quantized_greedy_text_with_a_bfloat16_cache_starts_like_float32s(tiny_gguf, quant):
    """Both caches decode the same tiny model (native layer steps); their greedy tokens agree at first."""
    prompt = [5, 9, 13, 2, 7, 40, 41]
    tokens = {
        kv: qwq.load(tiny_gguf, quant=quant, kv_cache=kv).generate(prompt, 8, temperature=0, ignore_eos=True)
        for kv in ("bf16", "f32")
    }
    assert tokens["bf16"][:4] == tokens["f32"][:4]


def _attention_reference(attention: Attention, x, cos, sin, cache_k, cache_v, start: int) -> torch.Tensor:
    """The layer's maths by hand: projections, rotary, keys and values rounded to bfloat16, causal SDPA over the
    positions before and in this chunk (earlier ones from the given cache contents)."""
    batch, seq, _ = x.shape
    heads, kv_heads, d = attention.num_heads, attention.num_kv_heads, attention.head_dim
    q = apply_rotary(attention.q_proj(x).view(batch, seq, heads, d).transpose(1, 2), cos, sin)
    k = apply_rotary(attention.k_proj(x).view(batch, seq, kv_heads, d).transpose(1, 2), cos, sin)
    v = attention.v_proj(x).view(batch, seq, kv_heads, d).transpose(1, 2)
    keys = torch.cat([cache_k[:, :, :start].float(), k.to(torch.bfloat16).float()], dim=2)
    values = torch.cat([cache_v[:, :, :start].float(), v.to(torch.bfloat16).float()], dim=2)
    mask = torch.arange(start + seq)[None, :] <= torch.arange(start, start + seq)[:, None]  # (T, end)
    out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=True)
    return attention.o_proj(out.transpose(1, 2).reshape(batch, seq, heads * d))


def test_python_attention_writes_rounded_keys_and_reads_them_back_exactly():
    """A prompt chunk and a decode step of a float32 layer over a bfloat16 cache."""
    config = ModelConfig(
        vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6, rope_theta=10000.0,
        tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    attention = Attention(config).eval()
    rotary = RotaryEmbedding(config.head_dim, config.rope_theta)
    cache = KVCache(config, 2, 32, torch.bfloat16, "cpu")
    layer = cache.layer(0)
    slots = torch.tensor([1])
    with torch.no_grad():
        for start, seq in [(0, 9), (9, 1)]:
            x = torch.randn(1, seq, config.hidden_size)
            positions = torch.arange(start, start + seq)[None]
            cos, sin = (t.view(1, 1, seq, -1) for t in rotary(positions.reshape(-1), torch.float32))
            before_k, before_v = layer.k[1:2].clone(), layer.v[1:2].clone()
            expected = _attention_reference(attention, x, cos, sin, before_k, before_v, start)
            got = attention(x, cos, sin, positions, None, start + seq, layer, slots)  # causal, or one query
            assert (got - expected).abs().max().item() < 1e-5
            k = apply_rotary(attention.k_proj(x).view(1, seq, 2, -1).transpose(1, 2), cos, sin)
            assert torch.equal(layer.k[1, :, start : start + seq], k[0].to(torch.bfloat16))
    assert layer.k.dtype == torch.bfloat16 and not layer.k[0].any()  # slot 0 untouched


def test_memory_estimate_counts_the_kv_dtype():
    """QwQ-32B-Preview int4 at 8192 positions: 64 layers x 8 KV heads x 128 x (key + value) = 1 Mi values a
    position... times 2 bytes in bfloat16, 4 in float32."""
    bf16 = qwq.load("qwq-32b-preview", device="meta", quant="int4")
    f32 = qwq.load("qwq-32b-preview", device="meta", quant="int4", kv_cache="f32")
    need_bf16, need_f32 = estimate(bf16.network, torch.float32, 8192), estimate(f32.network, torch.float32, 8192)
    assert need_bf16.kv_cache == 64 * 8 * 128 * 2 * 2 * 8192 == 2 * GIB
    assert need_f32.kv_cache == 2 * need_bf16.kv_cache
    assert need_f32.total - need_bf16.total == 2 * GIB
    assert "KV cache 2.0 in bfloat16" in need_bf16.describe()
    assert need_bf16.total < 24 * GIB  # issue 14: the q4_k_m GGUF, int4 at 8192 positions, on a 24 GiB machine


def test_show_gives_bytes_per_position_in_both_dtypes():
    config = qwq.load("qwq-32b-preview", device="meta").config
    text = kv_cache_description(config, torch.float32, 8192)
    assert text.startswith("float32: 512 KiB a position, 4 GiB at 8192")
    assert "bfloat16, the default with --quant or --kv-cache bf16: 256 KiB a position, 2 GiB at 8192" in text
    assert kv_cache_description(config, torch.bfloat16, 1024) == "bfloat16: 256 KiB a position, 256 MiB at 1024"
