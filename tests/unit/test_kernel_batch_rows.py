"""qwq's int8/int4 kernels on batches of activation rows (each instruction-set build): every output row is bitwise
the row computed alone, whatever the batch size and the row's place in it (batched decoding and speculative
decoding rely on it), and close to the float product of the dequantized weights and activations."""

from __future__ import annotations

import platform

import pytest
import torch

from qwq.quant import native

pytestmark = pytest.mark.skipif(platform.machine() != "x86_64", reason="the instruction-set variants are x86's")

BATCH_SIZES = [1, 2, 3, 4, 5, 8, 13, 16]
# (in, out): K with and without groups left over past whole vector chunks, N a multiple of 4 but not of 8
SHAPES = [(896, 132), (4864, 36)]
INT4_CASES = [(k, n, g) for k, n in SHAPES for g in (32, 64, 128, 256) if k % g == 0]


def _activations(rows: int, width: int, seed: int) -> torch.Tensor:
    """Rows of very different sizes, with an outlier column as LLM activations have, and an all-zero row."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, width, generator=generator) * torch.logspace(-2, 2, rows)[:, None]
    x[:, 7] *= 40.0
    x[rows // 2] = 0.0
    return x


def _as_quantized(x: torch.Tensor, largest: int) -> torch.Tensor:
    """x as the kernels quantize it (see the top of kernels.cpp): blocks of 32 rounded to integers of magnitude
    at most `largest` (127 against int4 weights, 32767 against int8), times the block's scale."""
    blocks = x.reshape(x.shape[0], -1, 32)
    peak = blocks.abs().amax(dim=-1, keepdim=True)
    inverse = torch.where(peak > 0, largest / peak, torch.zeros_like(peak))
    return ((blocks * inverse).round() * (peak / largest)).reshape(x.shape)


def _relative(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got.double() - expected).norm() / expected.norm()).item()


def _int4_weight(k: int, n: int, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Packed int4 weight, its float16 scale and low, and the float weight they stand for."""
    generator = torch.Generator().manual_seed(group_size + k)
    q = torch.randint(0, 16, (n, k), dtype=torch.uint8, generator=generator)
    groups = k // group_size
    scale = (torch.rand(n, groups, generator=generator) * 0.01 + 0.001).half()
    low = (torch.randn(n, groups, generator=generator) * 0.05).half()
    weight = q.float().reshape(n, groups, group_size) * scale.float()[..., None] + low.float()[..., None]
    return native.pack_int4(q), scale, low, weight.reshape(n, k)


def _int8_weight(k: int, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(k)
    weight = torch.randn(n, k, generator=generator)
    scale = weight.abs().amax(dim=1) / 127
    q = torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return native.pack_int8(q), scale, q.float() * scale[:, None]


def _assert_rows_as_alone(product, x: torch.Tensor) -> None:
    got = product(x)
    for i in range(x.shape[0]):
        alone = product(x[i : i + 1].contiguous())[0]
        assert torch.equal(got[i], alone), f"row {i} of {x.shape[0]} differs from the row alone"


def _assert_every_place_as_alone(product, x: torch.Tensor, row: torch.Tensor) -> None:
    """The same row put at each place of a batch comes out as it does alone."""
    alone = product(row[None])[0]
    for place in range(x.shape[0]):
        batch = x.clone()
        batch[place] = row
        assert torch.equal(product(batch)[place], alone), f"row at place {place} of {x.shape[0]} differs"


@pytest.mark.parametrize(("in_features", "out_features", "group_size"), INT4_CASES)
def test_int4_batch_rows_are_the_rows_alone(kernels, in_features, out_features, group_size):
    packed, scale, low, weight = _int4_weight(in_features, out_features, group_size)
    bias = torch.randn(out_features)

    def product(x: torch.Tensor) -> torch.Tensor:
        return kernels.int4_matmul(x, packed, scale, low, group_size, bias)

    x = _activations(max(BATCH_SIZES), in_features, seed=group_size)
    for rows in BATCH_SIZES:
        _assert_rows_as_alone(product, x[:rows].contiguous())
    _assert_every_place_as_alone(product, x[:13].contiguous(), x[-1])
    expected = _as_quantized(x, 127).double() @ weight.double().t() + bias.double()
    assert _relative(product(x), expected) < 1e-4


@pytest.mark.parametrize(("in_features", "out_features"), SHAPES)
def test_int8_batch_rows_are_the_rows_alone(kernels, in_features, out_features):
    packed, scale, weight = _int8_weight(in_features, out_features)
    bias = torch.randn(out_features)

    def product(x: torch.Tensor) -> torch.Tensor:
        return kernels.int8_matmul(x, packed, scale, bias)

    x = _activations(max(BATCH_SIZES), in_features, seed=in_features)
    for rows in BATCH_SIZES:
        _assert_rows_as_alone(product, x[:rows].contiguous())
    _assert_every_place_as_alone(product, x[:13].contiguous(), x[-1])
    expected = _as_quantized(x, 32767).double() @ weight.double().t() + bias.double()
    assert _relative(product(x), expected) < 1e-4
