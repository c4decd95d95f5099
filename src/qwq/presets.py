"""Published configurations of known checkpoints, for building an architecture without its weights.

The values are copied from the checkpoints' own `config.json` and `generation_config.json` on the Hub.
"""

from __future__ import annotations

from dataclasses import dataclass

from qwq.config import GenerationDefaults, ModelConfig

QWQ_SYSTEM_PROMPT = (
    "You are a helpful and harmless assistant. You are Qwen developed by Alibaba. You should think step-by-step."
)


@dataclass(frozen=True)
class Preset:
    """A named architecture: its config, its sampling defaults, and the Hub repository it comes from."""

    name: str
    hub_repo: str
    config: ModelConfig
    generation: GenerationDefaults


QWQ_32B_PREVIEW = Preset(
    name="qwq-32b-preview",
    hub_repo="Qwen/QwQ-32B-Preview",
    config=ModelConfig.from_hf_dict(
        {
            "architectures": ["Qwen2ForCausalLM"],
            "model_type": "qwen2",
            "hidden_act": "silu",
            "vocab_size": 152064,
            "hidden_size": 5120,
            "intermediate_size": 27648,
            "num_hidden_layers": 64,
            "num_attention_heads": 40,
            "num_key_value_heads": 8,
            "max_position_embeddings": 32768,
            "rms_norm_eps": 1e-05,
            "rope_theta": 1000000.0,
            "rope_scaling": None,
            "use_sliding_window": False,
            "tie_word_embeddings": False,
            "bos_token_id": 151643,
            "eos_token_id": 151645,
        },
        source="preset qwq-32b-preview",
    ),
    generation=GenerationDefaults(
        temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.0, eos_token_ids=(151645, 151643)
    ),
)

PRESETS: dict[str, Preset] = {QWQ_32B_PREVIEW.name: QWQ_32B_PREVIEW}
