"""What `qwq show` and the chat's `/show info` print about a model: read from its files, no weights loaded."""

from __future__ import annotations

from qwq.api import Model
from qwq.config import GenerationDefaults


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
        ("vocabulary", str(config.vocab_size)),
        ("source", model.source),
    ]


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
