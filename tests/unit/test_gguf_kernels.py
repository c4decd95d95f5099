"""qwq's kernels for GGUF block formats (gguf_kernels.cpp), each instruction-set path compiled on its own, format
by format: the packed planes dequantize to exactly what `gguf.quants.dequantize` computes from the file's
blocks, and the products equal the float product of the same int8-quantized activations with those weights."""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as QType
from gguf.quants import dequantize

from qwq.weights.gguf_container import read_header

from tiny_checkpoints import gguf_blocks as blocks

pytestmark = pytest.mark.skipif(platform.machine() != "x86_64", reason="the instruction-set variants are x86's")

QUANTIZABLE = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"]  # types gguf's Python package can quantize
K_TYPES = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]


def pack(kernels, raw: np.ndarray, type_name: str, k: int) -> list[torch.Tensor]:
    qtype = int(QType[type_name])
    planes = [torch.empty(raw.shape[0], width, dtype=torch.uint8) for width in kernels.gguf_plane_widths(qtype, k)]
    kernels.gguf_pack(torch.from_numpy(raw), qtype, k, planes, 0)
    return planes


def quantized_activations(x: torch.Tensor) -> torch.Tensor:
    """x as the kernels see it: int8 in blocks of 32 along the row, one float32 scale per block."""
    blocks_ = x.reshape(x.shape[0], -1, 32)
    peak = blocks_.abs().amax(dim=-1, keepdim=True)
    inverse = torch.where(peak > 0, 127.0 / peak, torch.zeros_like(peak))
    return (torch.round(blocks_ * inverse) * (peak / 127.0)).reshape(x.shape)


def _relative(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got.double() - expected.double()).norm() / expected.double().norm()).item()


SHAPES = {"Q8_0": (37, 896), "Q4_0": (16, 160), "Q4_1": (9, 4864), "Q5_0": (20, 896), "Q5_1": (12, 288)}
SHAPES |= {name: (19, 512) for name in K_TYPES} | {"Q6_K": (21, 4864), "Q4_K": (13, 1536)}


@pytest.mark.parametrize("type_name", QUANTIZABLE + K_TYPES)
def test_dequantize_is_gguf_exactly(kernels, type_name):
    rows, k = SHAPES[type_name]
    raw = blocks(type_name, rows, k)
    planes = pack(kernels, raw, type_name, k)
    qtype = int(QType[type_name])
    reference = torch.from_numpy(dequantize(raw, QType[type_name]).astype(np.float32))
    assert torch.equal(kernels.gguf_dequantize(qtype, k, planes, 0, rows), reference)
    assert torch.equal(kernels.gguf_dequantize(qtype, k, planes, 3, 9, True), reference[3:9].bfloat16())
    ids = torch.tensor([[rows - 1, 0], [5, 5]])
    assert torch.equal(kernels.gguf_rows(qtype, k, planes, ids), reference[ids.flatten()])


@pytest.mark.parametrize("type_name", QUANTIZABLE + K_TYPES)
def test_product_equals_the_float_product(kernels, type_name):
    rows, k = SHAPES[type_name]
    raw = blocks(type_name, rows, k, seed=1)
    planes = pack(kernels, raw, type_name, k)
    weight = torch.from_numpy(dequantize(raw, QType[type_name]).astype(np.float32)).double()
    torch.manual_seed(k)
    x = torch.randn(5, k) * 2
    x[:, 7] = 30.0  # an outlier, as LLM activations have
    x[1, :32] = 0.0  # an all-zero block
    bias = torch.randn(rows)
    got = kernels.gguf_matmul(x, [int(QType[type_name])], k, [planes], bias)
    # the same quantized activations times the exact weights: only float rounding apart
    assert _relative(got, quantized_activations(x).double() @ weight.t() + bias) < 2e-6
    assert _relative(got, x.double() @ weight.t() + bias) < 0.01  # int8 activations in blocks of 32


@pytest.mark.parametrize("type_name", ["Q8_0", "Q5_0", "Q4_K", "Q6_K", "Q3_K"])
def test_rows_are_independent_of_the_batch(kernels, type_name):
    """Row r of a batch of M rows is bitwise the row computed alone, for every M up to 16."""
    rows, k = SHAPES[type_name]
    planes = pack(kernels, blocks(type_name, rows, k, seed=2), type_name, k)
    torch.manual_seed(3)
    x = torch.randn(16, k)
    qtype = int(QType[type_name])
    alone = torch.cat([kernels.gguf_matmul(x[r : r + 1], [qtype], k, [planes]) for r in range(16)])
    for m in (2, 3, 4, 5, 7, 9, 16):
        assert torch.equal(kernels.gguf_matmul(x[:m], [qtype], k, [planes]), alone[:m]), m


def test_parts_of_different_types_side_by_side(kernels):
    """A matrix of parts (Q/K/V stored as different types) computes each part's columns as that part alone."""
    k = 512
    names = ["Q5_0", "Q8_0", "Q6_K"]
    parts = [pack(kernels, blocks(name, n, k, seed=n), name, k) for name, n in zip(names, (64, 16, 24), strict=True)]
    types = [int(QType[name]) for name in names]
    x = torch.randn(3, k)
    stacked = kernels.gguf_matmul(x, types, k, parts)
    alone = torch.cat([kernels.gguf_matmul(x, [t], k, [p]) for t, p in zip(types, parts, strict=True)], dim=1)
    assert torch.equal(stacked, alone)


def test_every_instruction_set_computes_the_same_products(kernels):
    from kernel_builds import build_kernels

    portable = build_kernels("portable")
    k = 1024
    for name in ("Q4_K", "Q5_0", "Q8_0"):
        raw = blocks(name, 8, k, seed=5)
        x = torch.randn(2, k)
        got = kernels.gguf_matmul(x, [int(QType[name])], k, [pack(kernels, raw, name, k)])
        expected = portable.gguf_matmul(x, [int(QType[name])], k, [pack(portable, raw, name, k)])
        assert _relative(got, expected) < 1e-6, name


def test_real_tensors_of_the_test_model(kernels, gguf_path):
    """Rows of the 0.5B GGUF's own tensors (Q5_0, Q8_0, Q4_K, Q6_K) against gguf's dequantization."""
    _, infos = read_header(Path(gguf_path))
    seen = set()
    for info in infos:
        if len(info.shape) != 2 or info.qtype.name in seen or info.qtype.name not in QUANTIZABLE + K_TYPES:
            continue
        seen.add(info.qtype.name)
        n, k = info.shape
        rows = min(n, 64)
        raw = np.fromfile(gguf_path, dtype=np.uint8, count=info.n_bytes // n * rows, offset=info.offset)
        raw = raw.reshape(rows, -1)
        planes = pack(kernels, raw, info.qtype.name, k)
        reference = torch.from_numpy(dequantize(raw, info.qtype).astype(np.float32))
        assert torch.equal(kernels.gguf_dequantize(int(info.qtype), k, planes, 0, rows), reference), info.name
        x = torch.randn(2, k)
        got = kernels.gguf_matmul(x, [int(info.qtype)], k, [planes])
        assert _relative(got, quantized_activations(x).double() @ reference.double().t()) < 2e-6, info.name
    assert seen == {"Q5_0", "Q8_0", "Q4_K", "Q6_K"}


def test_bad_planes_are_refused(kernels):
    k = 256
    planes = pack(kernels, blocks("Q4_K", 4, k), "Q4_K", k)
    qtype = int(QType.Q4_K)
    with pytest.raises(RuntimeError, match="planes"):
        kernels.gguf_matmul(torch.randn(1, k), [qtype], k, [planes[:1]])
    with pytest.raises(RuntimeError, match="plane 0"):
        kernels.gguf_matmul(torch.randn(1, k), [qtype], k, [[planes[0][:, :64].contiguous(), planes[1]]])
    with pytest.raises(RuntimeError, match="width 256"):
        kernels.gguf_matmul(torch.randn(1, 512), [qtype], k, [planes])
    with pytest.raises(RuntimeError, match="multiple of 256"):
        kernels.gguf_plane_widths(qtype, 100)
