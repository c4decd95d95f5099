"""Model and generation configuration, read from a checkpoint (HF `config.json` keys) and never guessed.

`ModelConfig` uses the field names of HF's `Qwen2Config`, so a `config.json` maps onto it one to one.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qwq.errors import ModelLoadError, UnsupportedModelError

QWEN2_ARCHITECTURE = "Qwen2ForCausalLM"


@dataclass(frozen=True)
class ModelConfig:
    """The shape of a Qwen2-architecture decoder."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    max_position_embeddings: int
    rms_norm_eps: float
    rope_theta: float
    tie_word_embeddings: bool
    head_dim: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    def __post_init__(self) -> None:
        heads = self.num_attention_heads
        if self.head_dim is None and isinstance(heads, int) and heads > 0:  # a zero count is refused by _check
            object.__setattr__(self, "head_dim", self.hidden_size // heads)
        self._check()

    def _check(self) -> None:
        positive = (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "max_position_embeddings",
            "head_dim",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ModelLoadError(f"config field {name!r} must be a positive integer, got {value!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ModelLoadError(
                f"num_attention_heads ({self.num_attention_heads}) is not a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.num_attention_heads * self.head_dim != self.hidden_size:
            raise ModelLoadError(
                f"num_attention_heads ({self.num_attention_heads}) × head_dim ({self.head_dim}) must equal "
                f"hidden_size ({self.hidden_size})"
            )
        if self.head_dim % 2:
            raise ModelLoadError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")
        if not 0 < self.rms_norm_eps < math.inf or not 0 < self.rope_theta < math.inf:
            raise ModelLoadError(
                f"rms_norm_eps ({self.rms_norm_eps}) and rope_theta ({self.rope_theta}) must be positive and finite"
            )

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        if self.eos_token_id is None:
            return ()
        if isinstance(self.eos_token_id, int):
            return (self.eos_token_id,)
        return tuple(self.eos_token_id)

    def to_hf_dict(self) -> dict[str, Any]:
        """The `config.json` an HF `Qwen2Config` accepts (used by the parity tests and `qwq show`)."""
        data = dataclasses.asdict(self)
        data.update(model_type="qwen2", architectures=[QWEN2_ARCHITECTURE], hidden_act="silu")
        return data

    @classmethod
    def from_hf_dict(cls, data: dict[str, Any], source: str = "config") -> ModelConfig:
        """Build from the keys of an HF `config.json`, refusing features this model does not implement."""
        model_type = data.get("model_type")
        architectures = data.get("architectures") or []
        if model_type != "qwen2" and QWEN2_ARCHITECTURE not in architectures:
            raise UnsupportedModelError(
                f"{source}: model_type {model_type!r} / architectures {architectures!r} is not Qwen2; "
                "qwq runs Qwen2-architecture checkpoints (QwQ-32B-Preview, Qwen2.5)"
            )
        if data.get("hidden_act", "silu") != "silu":
            raise UnsupportedModelError(f"{source}: hidden_act {data['hidden_act']!r} is not supported (only silu)")
        if data.get("use_sliding_window"):
            raise UnsupportedModelError(f"{source}: use_sliding_window=true is not supported")
        rope = data.get("rope_scaling") or data.get("rope_parameters") or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type != "default":
            raise UnsupportedModelError(f"{source}: rope scaling {rope_type!r} is not supported")
        rope_theta = data.get("rope_theta", rope.get("rope_theta", 10000.0))
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in fields}
        kwargs["rope_theta"] = float(rope_theta)
        kwargs.setdefault("tie_word_embeddings", False)
        missing = sorted(
            f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING and f.name not in kwargs
        )
        if missing:
            raise ModelLoadError(f"{source}: missing config fields {missing}")
        return cls(**kwargs)

    @classmethod
    def from_json_file(cls, path: Path) -> ModelConfig:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ModelLoadError(f"{path}: config.json not found") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelLoadError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ModelLoadError(f"{path}: expected a JSON object")
        return cls.from_hf_dict(data, source=str(path))


@dataclass(frozen=True)
class GenerationDefaults:
    """The sampling defaults a checkpoint ships (`generation_config.json`); used when a caller gives none."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    eos_token_ids: tuple[int, ...] = ()

    @classmethod
    def from_hf_dict(cls, data: dict[str, Any], fallback_eos: tuple[int, ...] = ()) -> GenerationDefaults:
        eos = data.get("eos_token_id", fallback_eos)
        eos_ids = (eos,) if isinstance(eos, int) else tuple(eos or ())
        greedy = data.get("do_sample") is False
        return cls(
            temperature=0.0 if greedy else float(data.get("temperature", 1.0)),
            top_p=float(data.get("top_p", 1.0)),
            top_k=int(data.get("top_k", 0) or 0),
            min_p=float(data.get("min_p", 0.0) or 0.0),
            repetition_penalty=float(data.get("repetition_penalty", 1.0)),
            eos_token_ids=eos_ids,
        )
