"""Swapping a model's Linear layers (LM head included) for weight-only quantized ones before loading.

Done on the `meta`-device model, so no float copy of the network ever exists; the loader then quantizes
each weight as it arrives. A layer whose shape no int4 layout can hold (input size not a multiple of the
group; for qwq's kernels output not a multiple of 4 or input not of 128, for PyTorch's output not a multiple
of 16) is stored as int8 instead, as llama.cpp falls back per tensor.
"""

from __future__ import annotations

import logging

from torch import nn

from qwq.errors import InvalidRequestError
from qwq.quant.linear import INT4_GROUP_SIZES, Int4Linear, Int8Linear, native_kernels_wanted

QUANT_MODES = ("int8", "int4")
logger = logging.getLogger(__name__)


def int4_packable(in_features: int, out_features: int, group_size: int) -> bool:
    if in_features % group_size:
        return False
    return native_kernels_wanted(in_features, out_features) or out_features % 16 == 0


def quantize_linears(model: nn.Module, mode: str, group_size: int = 32) -> nn.Module:
    if mode not in QUANT_MODES:
        raise InvalidRequestError(f"quant {mode!r} is not supported; choose one of {list(QUANT_MODES)} or None")
    if mode == "int4" and group_size not in INT4_GROUP_SIZES:
        raise InvalidRequestError(f"int4 group size must be one of {list(INT4_GROUP_SIZES)}, got {group_size!r}")
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, nn.Linear):
                continue
            bias = child.bias is not None
            if mode == "int4" and int4_packable(child.in_features, child.out_features, group_size):
                replacement = Int4Linear(child.in_features, child.out_features, bias, group_size)
            else:
                if mode == "int4":
                    logger.info(
                        "%s (%d -> %d) cannot be packed as int4: storing it as int8",
                        name,
                        child.in_features,
                        child.out_features,
                    )
                replacement = Int8Linear(child.in_features, child.out_features, bias)
            setattr(parent, name, replacement.to(child.weight.device))
    return model
