"""Strict weight loading: the model is built on the `meta` device and each tensor assigned in place.

Every expected name must arrive exactly once with the expected shape; anything else is an error that
names the checkpoint file and the tensor. Tensors are converted one at a time, so peak memory stays
near the size of the final weights. Layers that store their weight their own way (quantized, or a GGUF's own
blocks) take it through `set_weight`, whole or a block of rows at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from qwq.config import ModelConfig
from qwq.errors import ModelLoadError
from qwq.heap import return_freed_memory
from qwq.model.qwen2 import Qwen2ForCausalLM
from qwq.quant.gguf_linear import GGUFEmbedding, GGUFLinear, share_table
from qwq.quant.linear import QuantizedLinear

EMBEDDING = "model.embed_tokens.weight"
# Buffers some checkpoints carry that we recompute instead.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def build_empty(config: ModelConfig) -> Qwen2ForCausalLM:
    """The architecture without storage: for planning, parameter counts, and as the target of loading."""
    with torch.device("meta"):
        return Qwen2ForCausalLM(config).eval()


def stores_weight(module: nn.Module) -> bool:
    """Whether the layer holds its weight in a format of its own (quantized, or a GGUF's blocks), set through
    `set_weight` rather than assigned as a parameter."""
    return isinstance(module, QuantizedLinear | GGUFLinear | GGUFEmbedding)


def expected_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Checkpoint tensor names and shapes: parameters, plus the weight's shape for each layer storing its own."""
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    for name, module in model.named_modules():
        if stores_weight(module):
            shapes[f"{name}.weight"] = (module.out_features, module.in_features)
    return shapes


def quantized_table_dtype(dtype: torch.dtype) -> torch.dtype:
    """A quantized model's embedding table: it reads one row per token, so bfloat16 halves its memory at no speed
    cost (a tied LM head is quantized from this table, so a float32 copy of it never has to exist)."""
    return torch.bfloat16 if dtype == torch.float32 else dtype


def _assign(model: nn.Module, name: str, tensor: torch.Tensor, dtype: torch.dtype, device: torch.device) -> None:
    module_name, _, leaf = name.rpartition(".")
    module = model.get_submodule(module_name)
    if stores_weight(module) and leaf == "weight":
        # quantized from the checkpoint's own precision, or kept as its blocks, whole or as it arrives in blocks of rows
        module.set_weight(tensor.to(device) if isinstance(tensor, torch.Tensor) else tensor)
    elif name == EMBEDDING and isinstance(model.lm_head, QuantizedLinear):
        table = tensor.to(device=device, dtype=quantized_table_dtype(dtype))
        module._parameters[leaf] = nn.Parameter(table, requires_grad=False)
    else:
        module._parameters[leaf] = nn.Parameter(tensor.to(device=device, dtype=dtype), requires_grad=False)


def _check_finite(source: str, name: str, tensor: torch.Tensor) -> None:
    """Norms and biases are scanned as they load (they are small, and a NaN in one poisons every logit);
    `qwq check` scans the matrices too."""
    bad = tensor.numel() - int(torch.isfinite(tensor).sum())
    if bad:
        raise ModelLoadError(
            f"{source}: tensor {name!r} holds {bad} NaN or infinite values of {tensor.numel()}: the checkpoint is "
            "corrupt (`qwq check` scans every tensor)"
        )


def load_weights(
    model: Qwen2ForCausalLM,
    tensors: Iterable[tuple[str, torch.Tensor | Iterable[torch.Tensor]]],
    source: str,
    dtype: torch.dtype,
    device: torch.device,
    progress: Callable[[int, int], None] | None = None,
) -> Qwen2ForCausalLM:
    """Assign every tensor into `model` (built on meta); `progress(done, total)` is called after each."""
    expected = expected_shapes(model)
    tied = model.config.tie_word_embeddings
    quantized_head = isinstance(model.lm_head, QuantizedLinear)
    gguf_head = isinstance(model.lm_head, GGUFLinear)
    if tied and (quantized_head or gguf_head):
        expected.pop("lm_head.weight")  # fed from the embedding below
    loaded: set[str] = set()
    for name, tensor in tensors:
        if name.endswith(_IGNORED_SUFFIXES) or (tied and name == "lm_head.weight"):
            continue
        if name not in expected:
            raise ModelLoadError(f"{source}: unexpected tensor {name!r} (not part of a Qwen2 model)")
        if name in loaded:
            raise ModelLoadError(f"{source}: tensor {name!r} appears twice")
        if tuple(tensor.shape) != expected[name]:
            raise ModelLoadError(
                f"{source}: tensor {name!r} has shape {tuple(tensor.shape)}, the config expects {expected[name]}"
            )
        if isinstance(tensor, torch.Tensor) and tensor.dim() == 1:
            _check_finite(source, name, tensor)
        _assign(model, name, tensor, dtype, device)
        del tensor
        if tied and quantized_head and name == EMBEDDING:
            model.lm_head.set_weight(model.model.embed_tokens.weight)  # quantized 1024 rows at a time
        if tied and gguf_head and name == EMBEDDING:
            share_table(model.lm_head, model.model.embed_tokens)  # the same blocks, stored once
        return_freed_memory()
        loaded.add(name)
        if progress is not None:
            progress(len(loaded), len(expected))
    missing = sorted(set(expected) - loaded)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ModelLoadError(f"{source}: missing tensors: {shown}")
    if tied and not (quantized_head or gguf_head):
        model.lm_head.weight = model.model.embed_tokens.weight
    model.model.rotary_emb.reset(device)
    return model
