"""Strict weight loading: the model is built on the `meta` device and each tensor assigned in place.

Every expected name must arrive exactly once with the expected shape; anything else is an error that
names the checkpoint file and the tensor. Tensors are converted one at a time, so peak memory stays
near the size of the final weights.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from qwq.config import ModelConfig
from qwq.errors import ModelLoadError
from qwq.model.qwen2 import Qwen2ForCausalLM

# Buffers some checkpoints carry that we recompute instead.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def build_empty(config: ModelConfig) -> Qwen2ForCausalLM:
    """The architecture without storage: for planning, parameter counts, and as the target of loading."""
    with torch.device("meta"):
        return Qwen2ForCausalLM(config).eval()


def _set_parameter(model: nn.Module, name: str, value: torch.Tensor) -> None:
    module_name, _, leaf = name.rpartition(".")
    module = model.get_submodule(module_name)
    module._parameters[leaf] = nn.Parameter(value, requires_grad=False)


def load_weights(
    model: Qwen2ForCausalLM,
    tensors: Iterable[tuple[str, torch.Tensor]],
    source: str,
    dtype: torch.dtype,
    device: torch.device,
) -> Qwen2ForCausalLM:
    expected = {name: tuple(p.shape) for name, p in model.named_parameters()}
    tied = model.config.tie_word_embeddings
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
        _set_parameter(model, name, tensor.to(device=device, dtype=dtype))
        loaded.add(name)
    missing = sorted(set(expected) - loaded)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ModelLoadError(f"{source}: missing tensors: {shown}")
    if tied:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.model.rotary_emb.reset(device)
    return model
