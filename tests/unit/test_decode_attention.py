"""qwq's one-token attention kernel (`decode_attention` in step_kernels.cpp) over float32 and bfloat16 KV caches, on
every instruction-set build: the keys and values it writes are torch's roundings of the Python path's, its output
is float32 attention over the cache as written, and splitting a long row across threads (flash-decoding) changes
neither that nor the independence of a row from the rest of its batch."""

from __future__ import annotations

import platform
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F

from qwq.model.layers import apply_rotary

x86_only = pytest.mark.skipif(platform.machine() != "x86_64", reason="the instruction-set variants are x86's")
pytestmark = x86_only


@pytest.fixture
def threads(request) -> Iterator[int]:
    """Run the test under `request.param` torch threads (the kernel splits a row by its thread count)."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def _inputs(heads: int, kv_heads: int, d: int, capacity: int, batch: int, dtype: torch.dtype, seed: int):
    generator = torch.Generator().manual_seed(seed)
    k_cache = torch.randn(3, kv_heads, capacity, d, generator=generator).to(dtype)
    v_cache = torch.randn(3, kv_heads, capacity, d, generator=generator).to(dtype)
    qkv = torch.randn(batch, (heads + 2 * kv_heads) * d, generator=generator) * 3
    cos, sin = torch.randn(batch, d, generator=generator), torch.randn(batch, d, generator=generator)
    return qkv, cos, sin, k_cache, v_cache


def _new_rows(qkv, cos, sin, heads, kv_heads, d):
    """The Python path's new keys (rotated) and values in float32: (B, Hkv, D) each."""
    batch = qkv.shape[0]
    _, k, v = qkv.split([heads * d, kv_heads * d, kv_heads * d], dim=1)
    k = apply_rotary(k.view(batch, kv_heads, 1, d), cos[:, None, None], sin[:, None, None])[:, :, 0]
    return k, v.view(batch, kv_heads, d)


def _reference(qkv, cos, sin, k_cache, v_cache, slots, positions, heads):
    """SDPA in float32 over the caches as the kernel left them (bfloat16 values widen exactly)."""
    d = k_cache.shape[-1]
    outputs = []
    for b in range(qkv.shape[0]):
        q = apply_rotary(qkv[b, : heads * d].view(1, heads, 1, d), cos[b], sin[b])
        slot, end = int(slots[b]), int(positions[b]) + 1
        keys, values = k_cache[slot : slot + 1, :, :end].float(), v_cache[slot : slot + 1, :, :end].float()
        outputs.append(F.scaled_dot_product_attention(q, keys, values, enable_gqa=True).reshape(heads * d))
    return torch.stack(outputs)


SHAPES = [(14, 2, 64), (12, 2, 128), (4, 4, 48)]  # Qwen2.5 0.5B, 1.5B; a head size off the vector paths


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "f32"])
@pytest.mark.parametrize(("heads", "kv_heads", "head_dim"), SHAPES)
@pytest.mark.parametrize("threads", [1, 3, 4], indirect=True)
def test_attention_over_the_cache_as_written(kernels, dtype, heads, kv_heads, head_dim, threads):
    """Rows in slots 2 and 0 at lengths 2,100 and 77: the long one is split into blocks under 3 and 4 threads."""
    qkv, cos, sin, k_cache, v_cache = _inputs(heads, kv_heads, head_dim, 2200, 2, dtype, seed=heads + threads)
    slots, positions = torch.tensor([2, 0]), torch.tensor([2099, 76])
    before_k, before_v = k_cache.clone(), v_cache.clone()
    got = kernels.decode_attention(qkv, cos, sin, k_cache, v_cache, slots, positions, heads, kv_heads)

    k, v = _new_rows(qkv, cos, sin, heads, kv_heads, head_dim)
    for b, (slot, position) in enumerate(zip(slots.tolist(), positions.tolist(), strict=True)):
        assert torch.equal(k_cache[slot, :, position], k[b].to(dtype))  # rounded as torch rounds (to nearest even)
        assert torch.equal(v_cache[slot, :, position], v[b].to(dtype))
        before_k[slot, :, position] = k_cache[slot, :, position]
        before_v[slot, :, position] = v_cache[slot, :, position]
    assert torch.equal(k_cache, before_k) and torch.equal(v_cache, before_v)  # nothing else was written

    expected = _reference(qkv, cos, sin, k_cache, v_cache, slots, positions, heads)
    assert (got - expected).abs().max().item() < 2e-5 * expected.abs().max().item()


def test_bfloat16_writes_round_half_to_even(kernels):
    """Values halfway between two bfloat16s (and near it) round as torch's conversion does; cos 1, sin 0 keeps the
    key as given, so the key rows test the rounding too."""
    d, kv_heads, heads = 64, 2, 2
    halfway = torch.tensor([1.0 + 2**-8, 1.0 + 3 * 2**-8, -(1.0 + 2**-8), 1.0 + 2**-8 + 2**-20], dtype=torch.float32)
    values = halfway.repeat(d * kv_heads // 4)
    qkv = torch.cat([torch.randn(heads * d), values, values.flip(0)])[None]
    cos, sin = torch.ones(1, d), torch.zeros(1, d)
    k_cache = torch.zeros(1, kv_heads, 4, d, dtype=torch.bfloat16)
    v_cache = torch.zeros_like(k_cache)
    kernels.decode_attention(qkv, cos, sin, k_cache, v_cache, None, torch.tensor([3]), heads, kv_heads)
    assert torch.equal(k_cache[0, :, 3].reshape(-1), values.to(torch.bfloat16))
    assert torch.equal(v_cache[0, :, 3].reshape(-1), values.flip(0).to(torch.bfloat16))
    assert k_cache[0, 0, 3, :4].float().tolist() == [1.0, 1.0 + 2**-6, -1.0, 1.0 + 2**-7]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "f32"])
@pytest.mark.parametrize("threads", [2, 4], indirect=True)
def test_a_row_gives_the_same_bits_alone_and_in_a_batch(kernels, dtype, threads):
    """The split of a row depends on its own length only: alone or beside rows of other lengths, same output."""
    heads, kv_heads, d = 14, 2, 64
    qkv, cos, sin, k_cache, v_cache = _inputs(heads, kv_heads, d, 3000, 3, dtype, seed=7)
    slots, positions = torch.tensor([1, 0, 2]), torch.tensor([2999, 5, 1400])
    batched = kernels.decode_attention(
        qkv, cos, sin, k_cache.clone(), v_cache.clone(), slots, positions, heads, kv_heads
    )
    for b in range(3):
        alone = kernels.decode_attention(
            qkv[b : b + 1], cos[b : b + 1], sin[b : b + 1], k_cache.clone(), v_cache.clone(),
            slots[b : b + 1], positions[b : b + 1], heads, kv_heads,
        )  # fmt: skip
        assert torch.equal(alone[0], batched[b])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "f32"])
def test_rows_of_one_slot_at_consecutive_positions_see_each_other(kernels, dtype):
    """Speculative decoding's verify step: every row's key is written before any row attends."""
    heads, kv_heads, d = 4, 2, 64
    qkv, cos, sin, k_cache, v_cache = _inputs(heads, kv_heads, d, 64, 3, dtype, seed=11)
    slots, positions = torch.tensor([1, 1, 1]), torch.tensor([20, 21, 22])
    got = kernels.decode_attention(qkv, cos, sin, k_cache, v_cache, slots, positions, heads, kv_heads)
    expected = _reference(qkv, cos, sin, k_cache, v_cache, slots, positions, heads)
    assert (got - expected).abs().max().item() < 2e-5 * expected.abs().max().item()
    k, _ = _new_rows(qkv, cos, sin, heads, kv_heads, d)
    assert torch.equal(k_cache[1, :, 20:23].transpose(0, 1), k.to(dtype))


def test_refuses_caches_of_other_or_mixed_dtypes(kernels):
    qkv, angles = torch.zeros(1, 8 * 64), torch.zeros(1, 64)
    position = torch.tensor([0])
    for k_dtype, v_dtype in [(torch.float16, torch.float16), (torch.float32, torch.bfloat16)]:
        k_cache, v_cache = torch.zeros(1, 2, 8, 64, dtype=k_dtype), torch.zeros(1, 2, 8, 64, dtype=v_dtype)
        with pytest.raises(RuntimeError, match="must both be float32 or both bfloat16"):
            kernels.decode_attention(qkv, angles, angles, k_cache, v_cache, None, position, 4, 2)
