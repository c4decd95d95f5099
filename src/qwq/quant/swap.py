"""Swapping a model's Linear layers (LM head included) for weight-only quantized ones before loading.

Done on the `meta`-device model, so no float copy of the network ever exists; the loader then quantizes
each weight as it arrives.
"""

from __future__ import annotations

from torch import nn

from qwq.errors import InvalidRequestError
from qwq.quant.linear import Int4Linear, Int8Linear

QUANT_MODES = ("int8", "int4")


def quantize_linears(model: nn.Module, mode: str, group_size: int = 32) -> nn.Module:
    if mode not in QUANT_MODES:
        raise InvalidRequestError(f"quant {mode!r} is not supported; choose one of {list(QUANT_MODES)} or None")
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, nn.Linear):
                continue
            bias = child.bias is not None
            if mode == "int8":
                replacement = Int8Linear(child.in_features, child.out_features, bias)
            else:
                replacement = Int4Linear(child.in_features, child.out_features, bias, group_size)
            setattr(parent, name, replacement.to(child.weight.device))
    return model
