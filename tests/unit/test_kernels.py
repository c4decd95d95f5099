"""qwq's C++ int8/int4 kernels, each instruction-set path compiled on its own (AVX-512 VNNI where this CPU has
it, AVX2, portable C++), against the float product of the dequantized weights computed here by hand."""

from __future__ import annotations

import platform

import pytest
import torch

from qwq.quant import native

from kernel_builds import build_kernels

pytestmark = pytest.mark.skipif(platform.machine() != "x86_64", reason="the instruction-set variants are x86's")


def _relative(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got - expected).norm() / expected.norm()).item()


SHAPES = [(896, 128), (1536, 260), (4864, 896)]  # (in, out): out a multiple of 4 but not of 8 too


@pytest.mark.parametrize(("in_features", "out_features"), SHAPES)
@pytest.mark.parametrize("rows", [1, 3])
def test_int8_product(kernels, in_features, out_features, rows):
    torch.manual_seed(in_features + rows)
    weight, x = torch.randn(out_features, in_features), torch.randn(rows, in_features) * 3
    x[:, 5] = 40.0  # an outlier, as LLM activations have
    scale = weight.abs().amax(dim=1) / 127
    q = torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8)
    expected = x @ (q.float() * scale[:, None]).t()
    got = kernels.int8_matmul(x, native.pack_int8(q), scale)
    assert got.shape == (rows, out_features)
    assert _relative(got, expected) < 1e-4  # int16 activations: close to exact
    rows_4_to_12 = kernels.int8_dequantize(native.pack_int8(q), scale, 4, 12)  # the prompt path's weights
    assert torch.equal(rows_4_to_12, q[4:12].float() * scale[4:12, None])
    as_bfloat16 = kernels.int8_dequantize(native.pack_int8(q), scale, 4, 12, True)  # rounded as torch rounds
    assert torch.equal(as_bfloat16, rows_4_to_12.bfloat16())


INT4_CASES = [(i, o, g) for i, o in SHAPES for g in (32, 64, 128, 256) if i % g == 0]


@pytest.mark.parametrize(("in_features", "out_features", "group_size"), INT4_CASES)
def test_int4_product(kernels, in_features, out_features, group_size):
    torch.manual_seed(group_size)
    rows = 2
    q = torch.randint(0, 16, (out_features, in_features), dtype=torch.uint8)
    groups = in_features // group_size
    scale = (torch.rand(out_features, groups) * 0.01 + 0.001).half()
    low = (torch.randn(out_features, groups) * 0.05).half()
    x = torch.randn(rows, in_features)
    weight = q.float().reshape(out_features, groups, group_size) * scale.float()[..., None] + low.float()[..., None]
    expected = x @ weight.reshape(out_features, in_features).t()
    got = kernels.int4_matmul(x, native.pack_int4(q), scale, low, group_size)
    assert _relative(got, expected) < 0.02  # int8 activations in blocks of 32: about 1% here
    rows_8_to_16 = kernels.int4_dequantize(native.pack_int4(q), scale, low, group_size, 8, 16)
    assert torch.allclose(rows_8_to_16, weight.reshape(out_features, in_features)[8:16], atol=1e-6)
    as_bfloat16 = kernels.int4_dequantize(native.pack_int4(q), scale, low, group_size, 8, 16, True)
    assert torch.equal(as_bfloat16, rows_8_to_16.bfloat16())


def test_every_instruction_set_computes_the_same(kernels):
    """The vector paths sum in other orders than the portable one, but the same integer products."""
    torch.manual_seed(7)
    portable = build_kernels("portable")
    x, q = torch.randn(3, 1536), torch.randint(0, 16, (64, 1536), dtype=torch.uint8)
    scale, low = (torch.rand(64, 48) * 0.01).half(), (torch.randn(64, 48) * 0.05).half()
    packed = native.pack_int4(q)
    got, reference = kernels.int4_matmul(x, packed, scale, low, 32), portable.int4_matmul(x, packed, scale, low, 32)
    assert _relative(got, reference) < 1e-5


def test_layouts_round_trip():
    q8 = torch.randint(-127, 128, (12, 256), dtype=torch.int8)
    assert torch.equal(native.unpack_int8(native.pack_int8(q8)), q8)
    q4 = torch.randint(0, 16, (12, 256), dtype=torch.uint8)
    assert torch.equal(native.unpack_int4(native.pack_int4(q4)), q4)


def test_bad_shapes_are_refused(kernels):
    data = native.pack_int8(torch.zeros(8, 128, dtype=torch.int8))
    with pytest.raises(RuntimeError, match="does not match"):
        kernels.int8_matmul(torch.zeros(1, 256), data, torch.ones(8))
    with pytest.raises(RuntimeError, match="float32"):
        kernels.int8_matmul(torch.zeros(1, 128, dtype=torch.float64), data, torch.ones(8))
    packed = native.pack_int4(torch.zeros(8, 128, dtype=torch.uint8))
    with pytest.raises(RuntimeError, match="bad row range"):
        kernels.int8_dequantize(data, torch.ones(8), 2, 8)
    with pytest.raises(RuntimeError, match="group size"):
        kernels.int4_matmul(torch.zeros(1, 128), packed, torch.ones(8, 3).half(), torch.ones(8, 3).half(), 48)
