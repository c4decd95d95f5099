"""What `qwq show` and the chat's `/show info` print about a model: read from its files, no weights loaded."""

from __future__ import annotations

import torch

from qwq.api import Model
from qwq.config import GenerationDefaults, ModelConfig
from qwq.memory import dtype_name
from qwq.model.kv_cache import KVCache


def info_rows(model: Model) -> list[tuple[str, str]]:
    config = model.config
    context = str(config.max_position_embeddings)
    if model.context_length != config.max_position_embeddings:
        context += f" (this session: {model.context_length})"
    return [
        ("architecture", f"qwen2 ({config.num_hidden_layers} layers)"),
        ("parameters", f"{model.num_parameters() / 1e9:.2f}B ({model.num_parameters():,})"),
        ("quantization", model.storage_description()),
        ("context length", context),
        ("embedding length", str(config.hidden_size)),
        ("attention heads", f"{config.num_attention_heads} (key/value: {config.num_key_value_heads})"),
        ("KV cache", kv_cache_description(config, model.network.cache_dtype(), model.context_length)),
        ("vocabulary", str(config.vocab_size)),
        ("source", model.source),
    ]


def kv_cache_description(config: ModelConfig, dtype: torch.dtype, context: int) -> str:
    """The KV cache's dtype and bytes per position (what a longer context costs), and bfloat16's if it is not."""

    def cost(kind: torch.dtype) -> str:
        per_position = KVCache.bytes_per_position(config, kind)
        return f"{_size(per_position)} a position, {_size(per_position * context)} at {context}"

    text = f"{dtype_name(dtype)}: {cost(dtype)}"
    if dtype != torch.bfloat16:
        text += f" (bfloat16, the default with --quant or --kv-cache bf16: {cost(torch.bfloat16)})"
    return text


def _size(count: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= scale:
            return f"{count / scale:.3g} {unit}"
    return f"{count} B"


def parameter_rows(defaults: GenerationDefaults) -> list[tuple[str, str]]:
    """The checkpoint's default sampling parameters, under ollama's names."""
    return [
        ("temperature", f"{defaults.temperature:g}"),
        ("top_p", f"{defaults.top_p:g}"),
        ("top_k", str(defaults.top_k)),
        ("min_p", f"{defaults.min_p:g}"),
        ("repeat_penalty", f"{defaults.repetition_penalty:g}"),
        ("stop token ids", ", ".join(map(str, defaults.eos_token_ids))),
    ]


def format_rows(title: str, rows: list[tuple[str, str]]) -> str:
    width = max(len(label) for label, _ in rows) + 2
    return "\n".join([f"  {title}", *(f"    {label:<{width}}{value}" for label, value in rows)])
