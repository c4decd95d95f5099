"""Weight-only quantized Linear layers: int8 per output channel, int4 in groups along the input.

Quantization happens once, from a float weight, as the checkpoint loads (gpt-fast's scheme: symmetric int8;
asymmetric int4 with a scale and a minimum per group, w = q * scale + low, q in [0, 15]). Two ways to run them:

- "native" (the default on CPU where a C++ compiler is found): qwq's own kernels (kernels.cpp), which quantize
  the activations to int8 blocks and stream the weights near the memory bandwidth, for decode-sized inputs;
  prompt-sized inputs dequantize the weight a slice at a time and use a dense GEMM (bfloat16 where the CPU
  has bfloat16 arithmetic, else float32).
- "torch": PyTorch's packed kernels (`_weight_int8pack_mm`, `_weight_int4pack_mm_for_cpu`), which are fast
  only with bfloat16 activations, so the input is cast for the matmul. Also used for shapes the native
  layout cannot hold (output not a multiple of 4, input not a multiple of 128). `QWQ_KERNELS=torch`
  chooses them everywhere.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterable, Iterator, Sequence
from functools import lru_cache

import torch
from torch import nn

from qwq.errors import InvalidRequestError
from qwq.model.row_tiles import ROW_TILE, row_tiles
from qwq.quant import native

logger = logging.getLogger(__name__)

_TORCH_COMPUTE_DTYPE = torch.bfloat16
# Weights are quantized this many rows at a time, to bound the temporaries; packing int4 in chunks of a
# multiple of 64 rows gives the same bytes as packing the whole matrix.
_ROWS_PER_CHUNK = 1024
# Inputs with more rows than this (prompts) go through a dequantized dense GEMM on the native path.
_DECODE_ROWS = 16
INT4_GROUP_SIZES = (32, 64, 128, 256)
KERNELS_ENV = "QWQ_KERNELS"


def native_kernels_wanted(in_features: int, out_features: int) -> bool:
    """Whether a layer of this shape is stored in the native layout (decided before any weight exists)."""
    if os.environ.get(KERNELS_ENV, "native") == "torch":
        return False
    return native.packable(in_features, out_features) and shutil.which(os.environ.get("CXX", "c++")) is not None


@lru_cache(maxsize=1)
def _dense_dtype() -> torch.dtype:
    """The prompt GEMM's dtype: bfloat16 where the CPU multiplies it natively (AVX-512 BF16, AMX through oneDNN)
    *and* it measures faster here than float32 on a prompt-tile-sized product, else float32. A flag the CPU
    advertises is not proof that its fast path runs (or runs fast in this guest), so the choice is measured."""
    if not native.fast_bfloat16():
        return torch.float32
    timings = {dtype: _gemm_seconds(dtype) for dtype in (torch.float32, torch.bfloat16)}
    chosen = min(timings, key=timings.get)
    logger.info(
        "prompt GEMM in %s (%.2f ms bf16 vs %.2f ms f32 a tile)",
        chosen,
        1e3 * timings[torch.bfloat16],
        1e3 * timings[torch.float32],
    )
    return chosen


def _gemm_seconds(dtype: torch.dtype, rows: int = ROW_TILE, width: int = 1024, repeats: int = 5) -> float:
    """Best time of a (rows x width) @ (width x width) product in `dtype`."""
    x, w = torch.randn(rows, width).to(dtype), torch.randn(width, width).to(dtype)
    torch.mm(x, w)  # first call: oneDNN's kernel choice and any one-time setup
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(x, w)
        best = min(best, time.perf_counter() - started)
    return best


def _row_blocks(weight: torch.Tensor | Iterable[torch.Tensor], rows: int) -> Iterator[tuple[int, int, torch.Tensor]]:
    """(start, end, block) over a weight's rows: a tensor is split here, an iterable already comes in blocks
    (whose sizes must keep the native layouts' groups of four rows whole)."""
    blocks = weight.split(_ROWS_PER_CHUNK) if isinstance(weight, torch.Tensor) else weight
    start = 0
    for block in blocks:
        yield start, start + block.shape[0], block
        start += block.shape[0]
    if start != rows:
        raise InvalidRequestError(f"weight has {start} rows, the layer {rows}")


def _quantize_int8(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One scale per output row, values in [-127, 127]."""
    rows = rows.float()
    scale = (rows.abs().amax(dim=1) / 127.0).clamp(min=1e-10)
    return torch.round(rows / scale[:, None]).clamp(-127, 127).to(torch.int8), scale


def _quantize_int4(rows: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per group of inputs w ≈ q * scale + low, q in [0, 15]: q (rows, in), scale and low (rows, groups)."""
    grouped = rows.float().reshape(rows.shape[0], -1, group_size)
    low, high = grouped.amin(dim=-1), grouped.amax(dim=-1)
    scale = ((high - low) / 15.0).clamp(min=1e-10)
    q = torch.round((grouped - low[..., None]) / scale[..., None]).clamp(0, 15)
    return q.reshape(rows.shape).to(torch.uint8), scale, low


class _QuantizedLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.native = native_kernels_wanted(in_features, out_features)
        self.bias = nn.Parameter(torch.empty(out_features), requires_grad=False) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) -> (..., out). Rows that are one token each of a batch of sequences (B, 1, in), and any few
        rows, go through the decode kernels; prompt rows through the GEMM path in tiles of ROW_TILE."""
        flat = x.reshape(-1, self.in_features)
        one_token_rows = x.dim() == 3 and x.shape[1] == 1
        if one_token_rows or flat.shape[0] <= _DECODE_ROWS:
            out = self._few_rows(flat)
        else:
            out = self._dense_matmul(flat) if self.native else self._tiled_torch_matmul(flat)
        return out.to(x.dtype).view(*x.shape[:-1], self.out_features)

    def _few_rows(self, flat: torch.Tensor) -> torch.Tensor:
        """Decode-sized inputs, row by row the same whatever their number (float32 out, bias added)."""
        if self.native and (kernels := native.kernels()) is not None:
            bias = None if self.bias is None else self.bias.float()
            return self._native_matmul(kernels, flat.float().contiguous(), bias)  # bias added in C++
        if self.native:  # the layout whose kernels failed to build: the dense path serves every size
            return self._dense_matmul(flat)
        out = self._torch_matmul(flat.to(_TORCH_COMPUTE_DTYPE)).float()
        return out + self.bias if self.bias is not None else out

    def _tiled_torch_matmul(self, flat: torch.Tensor) -> torch.Tensor:
        x = flat.to(_TORCH_COMPUTE_DTYPE)
        out = torch.cat([self._torch_matmul(x[a:b]) for a, b in row_tiles(x.shape[0])]).float()
        return out + self.bias if self.bias is not None else out

    def _dense_matmul(self, flat: torch.Tensor) -> torch.Tensor:
        """Prompt-sized inputs (float32 out, bias added): dequantize the weight a slice of rows at a time and
        multiply each tile of ROW_TILE input rows by it in a dense GEMM, written straight into its block of the
        output. A last tile of at most _DECODE_ROWS rows takes the decode kernels (as those rows would alone)."""
        dtype = _dense_dtype()
        rows = flat.shape[0]
        tail = rows % ROW_TILE
        dense_rows = rows - tail if 0 < tail <= _DECODE_ROWS and native.kernels() is not None else rows
        x = flat[:dense_rows].to(dtype)
        out = torch.empty(rows, self.out_features, dtype=dtype, device=flat.device)
        for start in range(0, self.out_features, _ROWS_PER_CHUNK):
            end = min(start + _ROWS_PER_CHUNK, self.out_features)
            weight = self.dequantized(start, end, dtype).t()
            for first, last in row_tiles(dense_rows):
                torch.mm(x[first:last], weight, out=out[first:last, start:end])
        out = out.float()
        if self.bias is not None:
            out[:dense_rows] += self.bias
        if dense_rows < rows:
            out[dense_rows:] = self._few_rows(flat[dense_rows:])
        return out


class Int8Linear(_QuantizedLinear):
    def __init__(self, in_features: int, out_features: int, bias: bool) -> None:
        super().__init__(in_features, out_features, bias)
        if self.native:
            shape = (out_features // native.ROWS, native.ROWS * in_features)
            self.register_buffer("weight", torch.empty(shape, dtype=torch.uint8))
        else:
            self.register_buffer("weight", torch.empty(out_features, in_features, dtype=torch.int8))
        scale_dtype = torch.float32 if self.native else _TORCH_COMPUTE_DTYPE
        self.register_buffer("scales", torch.empty(out_features, dtype=scale_dtype))

    @torch.no_grad()
    def set_weight(self, weight: torch.Tensor | Iterable[torch.Tensor]) -> None:
        """Quantize a float weight (N, K), or the same as blocks of rows in order, a block at a time."""
        stored = torch.empty(self.weight.shape, dtype=self.weight.dtype)
        scales = torch.empty(self.scales.shape, dtype=self.scales.dtype)
        for start, end, rows in _row_blocks(weight, self.out_features):
            q, scales[start:end] = _quantize_int8(rows)
            if self.native:
                stored[start // native.ROWS : end // native.ROWS] = native.pack_int8(q)
            else:
                stored[start:end] = q
        self.weight, self.scales = stored, scales

    def dequantized(self, start: int = 0, end: int | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Rows [start, end) of the weight as `dtype` (start and end multiples of 4 on the native layout)."""
        end = self.out_features if end is None else end
        if not self.native:
            return (self.weight[start:end].float() * self.scales[start:end].float()[:, None]).to(dtype)
        if (kernels := native.kernels()) is not None:
            return kernels.int8_dequantize(self.weight, self.scales, start, end, dtype == torch.bfloat16).to(dtype)
        q = native.unpack_int8(self.weight[start // native.ROWS : end // native.ROWS])
        return (q.float() * self.scales[start:end][:, None]).to(dtype)

    def _torch_matmul(self, flat: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int8pack_mm(flat, self.weight, self.scales)

    def _native_matmul(self, kernels, flat: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return kernels.int8_matmul(flat, self.weight, self.scales, bias)

    def native_matrix(self, kernels):
        """This layer as the C++ step kernels take it (native layout only)."""
        bias = None if self.bias is None else self.bias.float()
        return kernels.QuantizedMatrix(self.weight, self.scales, None, bias, 0)


class Int4Linear(_QuantizedLinear):
    def __init__(self, in_features: int, out_features: int, bias: bool, group_size: int) -> None:
        if group_size not in INT4_GROUP_SIZES or in_features % group_size:
            raise InvalidRequestError(
                f"int4 group size must be one of {list(INT4_GROUP_SIZES)} and divide the layer's input size "
                f"{in_features}, got {group_size}"
            )
        super().__init__(in_features, out_features, bias)
        if not self.native and out_features % 16:
            raise InvalidRequestError(f"int4 packing needs output sizes divisible by 16, got {out_features}")
        self.group_size = group_size
        groups = in_features // group_size
        if self.native:
            shape = (out_features // native.ROWS, native.ROWS * in_features // 2)
            self.register_buffer("weight", torch.empty(shape, dtype=torch.uint8))
            self.register_buffer("scales", torch.empty(out_features, groups, dtype=torch.float16))
            self.register_buffer("lows", torch.empty(out_features, groups, dtype=torch.float16))
        else:
            self.register_buffer("weight", torch.empty(out_features, in_features // 2, dtype=torch.uint8))
            self.register_buffer("scales_and_zeros", torch.empty(groups, out_features, 2, dtype=_TORCH_COMPUTE_DTYPE))

    @torch.no_grad()
    def set_weight(self, weight: torch.Tensor | Iterable[torch.Tensor]) -> None:
        """Quantize a float weight (N, K), or the same as blocks of rows in order, a block at a time."""
        stored = torch.empty(self.weight.shape, dtype=self.weight.dtype)
        if self.native:
            scales = torch.empty(self.scales.shape, dtype=self.scales.dtype)
            lows = torch.empty(self.lows.shape, dtype=self.lows.dtype)
        else:
            scales_and_zeros = torch.empty(self.scales_and_zeros.shape, dtype=self.scales_and_zeros.dtype)
        for start, end, rows in _row_blocks(weight, self.out_features):
            q, scale, low = _quantize_int4(rows, self.group_size)
            if self.native:
                stored[start // native.ROWS : end // native.ROWS] = native.pack_int4(q)
                scales[start:end], lows[start:end] = scale, low
            else:  # torch's kernel computes (q - 8) * scale + zero
                stored[start:end] = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32), 1)
                scales_and_zeros[:, start:end] = torch.stack([scale.t(), (low + 8.0 * scale).t()], dim=-1)
        self.weight = stored
        if self.native:
            self.scales, self.lows = scales, lows
        else:
            self.scales_and_zeros = scales_and_zeros

    def dequantized(self, start: int = 0, end: int | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Rows [start, end) of the weight as `dtype` (native layout only: the dense path of prompts)."""
        end = self.out_features if end is None else end
        if (kernels := native.kernels()) is not None:
            as_bf16 = dtype == torch.bfloat16
            rows = kernels.int4_dequantize(self.weight, self.scales, self.lows, self.group_size, start, end, as_bf16)
            return rows.to(dtype)
        q = native.unpack_int4(self.weight[start // native.ROWS : end // native.ROWS]).float()
        grouped = q.reshape(end - start, -1, self.group_size)
        scale, low = self.scales[start:end].float()[..., None], self.lows[start:end].float()[..., None]
        return (grouped * scale + low).reshape(end - start, self.in_features).to(dtype)

    def _torch_matmul(self, flat: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self.weight, self.group_size, self.scales_and_zeros)

    def _native_matmul(self, kernels, flat: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return kernels.int4_matmul(flat, self.weight, self.scales, self.lows, self.group_size, bias)

    def native_matrix(self, kernels):
        """This layer as the C++ step kernels take it (native layout only)."""
        bias = None if self.bias is None else self.bias.float()
        return kernels.QuantizedMatrix(self.weight, self.scales, self.lows, bias, self.group_size)


QuantizedLinear = Int8Linear | Int4Linear


def concatenate_rows(parts: Sequence[QuantizedLinear]) -> QuantizedLinear:
    """One layer whose output is the parts' outputs side by side: their stored rows one after the other.

    The parts must be of one kind, layout, input size and group size (see `qwq.quant.fuse`)."""
    first = parts[0]
    out_features = sum(part.out_features for part in parts)
    bias = first.bias is not None
    with torch.device("meta"):  # every buffer is replaced below
        if isinstance(first, Int4Linear):
            fused = Int4Linear(first.in_features, out_features, bias, first.group_size)
        else:
            fused = Int8Linear(first.in_features, out_features, bias)
    fused.native = first.native  # the parts' layout, whatever the fused shape alone would choose
    for name, _ in first.named_buffers(recurse=False):
        row_dim = 1 if name == "scales_and_zeros" else 0  # torch's int4 layout keeps (groups, N, 2)
        setattr(fused, name, torch.cat([getattr(part, name) for part in parts], dim=row_dim))
    if bias:
        fused.bias = nn.Parameter(torch.cat([part.bias for part in parts]), requires_grad=False)
    return fused
