"""A loaded quantized model made ready for fast CPU decode: fused projections and qwq's C++ step kernels.

Projections that read the same input are fused, Q/K/V into one and gate/up into one: a decode step then
quantizes its input once and runs one kernel (one pass of threads) per group instead of three or two. On
small models, where each matrix is a fraction of a millisecond, the per-call cost is what keeps decode from
the memory bandwidth. Rows are independent in every quantized layout, so the fused weight is the parts'
packed rows one after the other: the same numbers, no requantization (gpt-fast fuses wqkv the same way, but
at the checkpoint's names; qwq keeps HF's names for loading and fuses after). Where qwq's own kernels run
the matmuls, each decoder layer's whole decode step then runs as one C++ call (step_kernels.cpp), which
saves the few dozen small torch ops a layer that Python would otherwise issue per token. A GGUF kept at its
bits fuses the parts stored as one type; where they differ (a file with V in Q8_0 and Q/K in Q5_0) the parts
stay apart in Python and the C++ step reads them as one matrix of parts side by side.
"""

from __future__ import annotations

from types import ModuleType

import torch
from torch import nn

from qwq.heap import return_freed_memory
from qwq.quant import gguf_linear, native
from qwq.quant.gguf_linear import GGUFLinear
from qwq.quant.linear import QuantizedLinear, concatenate_rows


def _fusable(parts: list[nn.Module]) -> bool:
    first = parts[0]
    if isinstance(first, GGUFLinear):
        return gguf_linear.fusable(parts)
    return all(
        isinstance(part, QuantizedLinear)
        and type(part) is type(first)
        and part.native == first.native
        and part.in_features == first.in_features
        and getattr(part, "group_size", None) == getattr(first, "group_size", None)
        and (part.bias is None) == (first.bias is None)
        for part in parts
    )


def fuse_quantized_projections(model: nn.Module) -> nn.Module:
    """Replace each decoder layer's q/k/v_proj by `qkv_proj` and gate/up_proj by `gate_up_proj` where all the
    parts are quantized alike (an int4 model may hold a few int8 layers; those stay apart)."""
    for layer in model.model.layers:
        attention, mlp = layer.self_attn, layer.mlp
        parts = [attention.q_proj, attention.k_proj, attention.v_proj]
        if _fusable(parts):
            attention.qkv_proj = _concatenate(parts)
            del attention.q_proj, attention.k_proj, attention.v_proj
        parts = [mlp.gate_proj, mlp.up_proj]
        if _fusable(parts):
            mlp.gate_up_proj = _concatenate(parts)
            del mlp.gate_proj, mlp.up_proj
        return_freed_memory()  # the parts just replaced, before the next layer's copies
    return model


def _concatenate(parts: list[nn.Module]) -> nn.Module:
    return gguf_linear.concatenate(parts) if isinstance(parts[0], GGUFLinear) else concatenate_rows(parts)


def _matrix(module: nn.Module, names: tuple[str, ...], kernels: ModuleType) -> object | None:
    """The C++ matrix of a fused projection, or of its GGUF parts side by side; None where it runs in Python."""
    fused = getattr(module, names[0], None)
    if isinstance(fused, QuantizedLinear | GGUFLinear) and fused.native:
        return fused.native_matrix(kernels)
    parts = [getattr(module, name, None) for name in names[1:]]
    if all(isinstance(part, GGUFLinear) for part in parts) and len({p.in_features for p in parts}) == 1:
        return gguf_linear.stacked_matrix(parts, kernels)
    return None


def _native_step(layer: nn.Module, kernels: ModuleType) -> object | None:
    """The layer's decode step as one C++ call, when every matrix is on qwq's kernels."""
    attention, mlp = layer.self_attn, layer.mlp
    matrices = [
        _matrix(attention, ("qkv_proj", "q_proj", "k_proj", "v_proj"), kernels),
        _matrix(attention, ("o_proj",), kernels),
        _matrix(mlp, ("gate_up_proj", "gate_proj", "up_proj"), kernels),
        _matrix(mlp, ("down_proj",), kernels),
    ]
    if any(m is None for m in matrices):
        return None
    norms = [layer.input_layernorm, layer.post_attention_layernorm]
    if any(norm.weight.dtype != torch.float32 for norm in norms):
        return None  # the step kernels compute in float32
    return kernels.DecoderLayerStep(
        norms[0].weight, norms[1].weight, norms[0].eps, *matrices, attention.num_heads, attention.num_kv_heads
    )


def prepare_quantized_decode(model: nn.Module) -> nn.Module:
    """Fuse the projections and, where the layers run on qwq's kernels, give each its one-call decode step."""
    fuse_quantized_projections(model)
    uses_native = any(isinstance(m, QuantizedLinear | GGUFLinear) and m.native for m in model.modules())
    if uses_native and (kernels := native.kernels()) is not None:
        for layer in model.model.layers:
            layer.native_step = _native_step(layer, kernels)
    return model
