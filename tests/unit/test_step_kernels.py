"""qwq's C++ decode step (step_kernels.cpp): each part against the torch ops it replaces, on every instruction-set
path, and quantized models decoding with the one-call layer step against the same models running their layers as
Python modules (the single stream and continuous batching's slots)."""

from __future__ import annotations

import platform

import pytest
import torch
import torch.nn.functional as F
from gguf import GGMLQuantizationType as QType

import qwq
from qwq.model.layers import RMSNorm, apply_rotary

from tiny_checkpoints import write_gguf

x86_only = pytest.mark.skipif(platform.machine() != "x86_64", reason="the instruction-set variants are x86's")


def _attention_reference(qkv, cos, sin, k_cache, v_cache, slots, positions, heads, kv_heads):
    """The Python path's maths: rotary q/k, the cache write, SDPA over positions 0..p of the slot."""
    d = k_cache.shape[-1]
    outputs = []
    for b in range(qkv.shape[0]):
        q, k, v = qkv[b].split([heads * d, kv_heads * d, kv_heads * d])
        q = apply_rotary(q.view(1, heads, 1, d), cos[b], sin[b])
        k = apply_rotary(k.view(1, kv_heads, 1, d), cos[b], sin[b])
        slot, end = int(slots[b]), int(positions[b]) + 1
        k_cache[slot, :, end - 1] = k[0, :, 0]
        v_cache[slot, :, end - 1] = v.view(kv_heads, d)
        keys, values = k_cache[slot : slot + 1, :, :end], v_cache[slot : slot + 1, :, :end]
        outputs.append(F.scaled_dot_product_attention(q, keys, values, enable_gqa=True).reshape(heads * d))
    return torch.stack(outputs)


@x86_only
@pytest.mark.parametrize(("heads", "kv_heads", "head_dim"), [(14, 2, 64), (12, 2, 128), (4, 4, 48)])
@pytest.mark.parametrize("lengths", [(1, 1), (7, 77), (600, 33)])
def test_decode_attention_matches_sdpa(kernels, heads, kv_heads, head_dim, lengths):
    torch.manual_seed(sum(lengths) + heads)
    k_cache, v_cache = torch.randn(3, kv_heads, 640, head_dim), torch.randn(3, kv_heads, 640, head_dim)
    qkv = torch.randn(2, (heads + 2 * kv_heads) * head_dim) * 3
    cos, sin = torch.randn(2, head_dim), torch.randn(2, head_dim)
    slots, positions = torch.tensor([2, 0]), torch.tensor([lengths[0] - 1, lengths[1] - 1])
    k_expected, v_expected = k_cache.clone(), v_cache.clone()
    expected = _attention_reference(qkv, cos, sin, k_expected, v_expected, slots, positions, heads, kv_heads)
    got = kernels.decode_attention(qkv, cos, sin, k_cache, v_cache, slots, positions, heads, kv_heads)
    assert (got - expected).abs().max() < 1e-4
    assert (k_cache - k_expected).abs().max() < 1e-5 and torch.equal(v_cache, v_expected)


@x86_only
def test_decode_attention_single_stream_form(kernels):
    """No slots: row b is slot b; one position and one cos/sin row serve every row."""
    torch.manual_seed(3)
    k_cache, v_cache = torch.randn(2, 2, 16, 64), torch.randn(2, 2, 16, 64)
    qkv, cos, sin = torch.randn(2, 8 * 64), torch.randn(1, 64), torch.randn(1, 64)
    k_expected, v_expected = k_cache.clone(), v_cache.clone()
    expected = _attention_reference(
        qkv, cos.expand(2, -1), sin.expand(2, -1), k_expected, v_expected, [0, 1], [9, 9], 4, 2
    )
    got = kernels.decode_attention(qkv, cos, sin, k_cache, v_cache, None, torch.tensor([9]), 4, 2)
    assert (got - expected).abs().max() < 1e-4


@x86_only
def test_decode_attention_refuses_bad_input(kernels):
    k_cache = torch.zeros(1, 2, 8, 64)
    qkv, angles = torch.zeros(1, 8 * 64), torch.zeros(1, 64)
    with pytest.raises(RuntimeError, match="past the cache"):
        kernels.decode_attention(qkv, angles, angles, k_cache, k_cache.clone(), None, torch.tensor([8]), 4, 2)
    with pytest.raises(RuntimeError, match="not in the cache"):
        slots = torch.tensor([1])
        kernels.decode_attention(qkv, angles, angles, k_cache, k_cache.clone(), slots, torch.tensor([0]), 4, 2)
    with pytest.raises(RuntimeError, match="qkv width"):
        kernels.decode_attention(qkv, angles, angles, k_cache, k_cache.clone(), None, torch.tensor([0]), 6, 2)


@x86_only
def test_silu_mul_and_rms_norm(kernels):
    torch.manual_seed(5)
    gate_up = torch.randn(3, 2 * 4864) * 6
    gate_up[0, :4] = torch.tensor([-100.0, 100.0, 0.0, -88.5])  # exp's clamped range and beyond
    gate, up = gate_up.chunk(2, dim=-1)
    expected = F.silu(gate) * up
    assert ((kernels.silu_mul(gate_up) - expected).abs() / (expected.abs() + 1e-6)).max() < 1e-5
    norm = RMSNorm(896, 1e-6)
    norm.weight.data = torch.randn(896)
    x = torch.randn(5, 896) * 4
    assert torch.allclose(kernels.rms_norm(x, norm.weight.data, 1e-6), norm(x), rtol=1e-5, atol=1e-5)


def _decode_logits(model: qwq.Model, ids: list[int], native_step: bool) -> torch.Tensor:
    """Logits of a prefill of 3 tokens, then of each further token decoded one at a time with the cache."""
    network = model.network
    steps = [layer.native_step for layer in network.model.layers]
    if not native_step:
        for layer in network.model.layers:
            layer.native_step = None
    try:
        with torch.inference_mode():
            cache = network.new_cache(1, len(ids))
            outputs = [network(torch.tensor([ids[:3]]), torch.arange(3)[None], cache)[0]]
            for position in range(3, len(ids)):
                outputs.append(network(torch.tensor([[ids[position]]]), torch.tensor([[position]]), cache)[0])
    finally:
        for layer, step in zip(network.model.layers, steps, strict=True):
            layer.native_step = step
    return torch.cat(outputs)


# The tiny model's head (263 rows) runs on PyTorch's int8 kernel, whose bfloat16 output rounds the logits to
# 3 significant digits: one rounding step there is 0.4% of the largest logit.
@pytest.mark.parametrize(("quant", "tolerance"), [("int8", 0.01), ("int4", 0.05)])
def test_layer_step_decodes_like_the_python_layers(tmp_path, quant, tolerance):
    """Same weights, same cache: the one-call C++ layer equals the Python modules up to float rounding, which
    int4's int8 activations can turn into one quantization step here and there (hence its wider bound)."""
    model = qwq.load(write_gguf(tmp_path / "tiny.gguf", QType.F32), quant=quant)
    assert all(layer.native_step is not None for layer in model.network.model.layers)
    ids = torch.randint(0, model.config.vocab_size, (40,), generator=torch.Generator().manual_seed(0)).tolist()
    native, python = _decode_logits(model, ids, True), _decode_logits(model, ids, False)
    assert ((native - python).abs().max() / python.abs().max()).item() < tolerance
    assert (native.argmax(-1) == python.argmax(-1)).float().mean() > 0.9


def test_layer_step_serves_batched_slots(tmp_path):
    """Continuous batching's decode: rows in other slots at other positions, as the engine's batched step gives
    them."""
    model = qwq.load(write_gguf(tmp_path / "tiny.gguf", QType.F32), quant="int8")
    network = model.network
    steps = [layer.native_step for layer in network.model.layers]
    prompts = [[5, 9, 13, 2, 7], [40, 41]]

    def decode_step(native_step: bool) -> torch.Tensor:
        for layer, step in zip(network.model.layers, steps, strict=True):
            layer.native_step = step if native_step else None
        with torch.inference_mode():
            cache = network.new_cache(3, 16)
            for slot, prompt in zip((2, 0), prompts, strict=True):
                positions = torch.arange(len(prompt))[None]
                network(torch.tensor([prompt]), positions, cache, torch.tensor([slot]))
            positions = torch.tensor([[len(prompts[0])], [len(prompts[1])]])
            return network(torch.tensor([[3], [4]]), positions, cache, torch.tensor([2, 0]))

    native, python = decode_step(True), decode_step(False)
    assert ((native - python).abs().max() / python.abs().max()).item() < 0.01
