"""Weight-only quantized Linear layers: int8 per output channel, int4 in groups along the input.

They run on PyTorch's packed CPU kernels (`_weight_int8pack_mm`, `_weight_int4pack_mm_for_cpu`),
which are fast only with bfloat16 activations: the input is cast to bfloat16 for the matmul and the
output cast back. Quantization happens once, from a float weight, as the checkpoint loads (gpt-fast's
scheme: symmetric int8; asymmetric int4 with a scale and a zero point per group).
"""

from __future__ import annotations

import torch
from torch import nn

from qwq.errors import InvalidRequestError

_COMPUTE_DTYPE = torch.bfloat16
# Weights are quantized this many rows at a time, to bound the temporaries; packing int4 in chunks of a
# multiple of 64 rows gives the same bytes as packing the whole matrix.
_ROWS_PER_CHUNK = 1024
INT4_GROUP_SIZES = (32, 64, 128, 256)


class Int8Linear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.empty(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scales", torch.empty(out_features, dtype=_COMPUTE_DTYPE))
        self.bias = nn.Parameter(torch.empty(out_features), requires_grad=False) if bias else None

    @torch.no_grad()
    def set_weight(self, weight: torch.Tensor) -> None:
        """Quantize a float (out, in) weight: one scale per output row, values in [-127, 127]."""
        values, scales = [], []
        for rows in weight.split(_ROWS_PER_CHUNK):
            rows = rows.float()
            scale = (rows.abs().amax(dim=1) / 127.0).clamp(min=1e-10)
            values.append(torch.round(rows / scale[:, None]).clamp(-127, 127).to(torch.int8))
            scales.append(scale)
        self.weight = torch.cat(values)
        self.scales = torch.cat(scales).to(_COMPUTE_DTYPE)

    def dequantized(self) -> torch.Tensor:
        return self.weight.float() * self.scales.float()[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).to(_COMPUTE_DTYPE)  # (M, in)
        out = torch.ops.aten._weight_int8pack_mm(flat, self.weight, self.scales).to(x.dtype)  # (M, out)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)


class Int4Linear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool, group_size: int) -> None:
        super().__init__()
        if group_size not in INT4_GROUP_SIZES or in_features % group_size:
            raise InvalidRequestError(
                f"int4 group size must be one of {list(INT4_GROUP_SIZES)} and divide the layer's input size "
                f"{in_features}, got {group_size}"
            )
        if out_features % 16:
            raise InvalidRequestError(f"int4 packing needs output sizes divisible by 16, got {out_features}")
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        self.register_buffer("weight", torch.empty(out_features, in_features // 2, dtype=torch.uint8))
        groups = in_features // group_size
        self.register_buffer("scales_and_zeros", torch.empty(groups, out_features, 2, dtype=_COMPUTE_DTYPE))
        self.bias = nn.Parameter(torch.empty(out_features), requires_grad=False) if bias else None

    @torch.no_grad()
    def set_weight(self, weight: torch.Tensor) -> None:
        """Quantize a float (out, in) weight to 4 bits: per group, w ≈ (q - 8) * scale + zero, q in [0, 15]."""
        packed, params = [], []
        for rows in weight.split(_ROWS_PER_CHUNK):
            grouped = rows.float().reshape(rows.shape[0], -1, self.group_size)  # (rows, groups, g)
            low, high = grouped.amin(dim=-1), grouped.amax(dim=-1)  # (rows, groups)
            scales = ((high - low) / 15.0).clamp(min=1e-10)
            q = torch.round((grouped - low[..., None]) / scales[..., None]).clamp(0, 15).to(torch.int32)
            packed.append(torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.reshape(rows.shape), 1))
            params.append(torch.stack([scales.t(), (low + 8.0 * scales).t()], dim=-1))  # (groups, rows, 2)
        self.weight = torch.cat(packed)
        self.scales_and_zeros = torch.cat(params, dim=1).to(_COMPUTE_DTYPE).contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).to(_COMPUTE_DTYPE)  # (M, in)
        out = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self.weight, self.group_size, self.scales_and_zeros)
        out = out.to(x.dtype)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)


QuantizedLinear = Int8Linear | Int4Linear
