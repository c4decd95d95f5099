"""Reading GGUF checkpoints (llama.cpp's format) through the `gguf` package.

Gives the model config from the file's metadata and the tensors under HF names, each dequantized to
float32 one at a time, so loading never holds a second full copy of the weights. llama.cpp's converter
stores Qwen2's Q/K projections unpermuted, so no reordering is needed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize

from qwq.config import ModelConfig
from qwq.errors import ModelLoadError, UnsupportedModelError

_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_PATTERN = re.compile(r"blk\.(\d+)\.(.+)")
GGUF_MAGIC = b"GGUF"

# The types Qwen GGUFs use; others may dequantize through `gguf` too, but these are the ones we test.
SUPPORTED_TYPES = frozenset(
    GGMLQuantizationType[name]
    for name in ("F32", "F16", "BF16", "Q8_0", "Q5_0", "Q5_1", "Q4_0", "Q4_1", "Q4_K", "Q5_K", "Q6_K", "Q2_K", "Q3_K")
)


def hf_tensor_name(gguf_name: str) -> str | None:
    """The HF name for a GGUF tensor name, or None for a name Qwen2 does not have."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    match = _LAYER_PATTERN.fullmatch(gguf_name)
    if match and match.group(2) in _LAYER_NAMES:
        return f"model.layers.{match.group(1)}.{_LAYER_NAMES[match.group(2)]}"
    return None


class GGUFFile:
    """An opened, validated GGUF file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if not path.is_file():
            raise ModelLoadError(f"{path}: file not found")
        with path.open("rb") as handle:
            magic = handle.read(4)
        if magic != GGUF_MAGIC:
            raise ModelLoadError(f"{path}: not a GGUF file (starts with {magic!r}, expected {GGUF_MAGIC!r})")
        try:
            self.reader = GGUFReader(path, "r")
        except Exception as exc:  # the reader raises many kinds (ValueError, struct and numpy errors) on bad bytes
            size = path.stat().st_size
            raise ModelLoadError(
                f"{path}: not a readable GGUF file, truncated or corrupt ({size} bytes; {type(exc).__name__}: {exc})"
            ) from None
        self._check_tensors_complete()
        architecture = self.metadata("general.architecture")
        if architecture != "qwen2":
            raise UnsupportedModelError(
                f"{path}: GGUF architecture {architecture!r} is not supported; qwq runs 'qwen2' checkpoints"
            )

    def _check_tensors_complete(self) -> None:
        size = self.path.stat().st_size
        for tensor in self.reader.tensors:
            if tensor.data_offset + tensor.n_bytes > size or tensor.data.nbytes != tensor.n_bytes:
                raise ModelLoadError(
                    f"{self.path}: truncated: tensor {tensor.name!r} needs bytes up to "
                    f"{tensor.data_offset + tensor.n_bytes}, the file has {size}"
                )

    def metadata(self, key: str, default: Any = None) -> Any:
        field = self.reader.get_field(key)
        if field is None:
            return default
        try:
            return field.contents()
        except Exception as exc:
            raise ModelLoadError(f"{self.path}: metadata {key!r} is unreadable ({exc})") from None

    def _require(self, key: str) -> Any:
        value = self.metadata(key)
        if value is None:
            raise ModelLoadError(f"{self.path}: metadata {key!r} is missing")
        return value

    def model_config(self) -> ModelConfig:
        prefix = "qwen2."
        names = {t.name: t for t in self.reader.tensors}
        if "token_embd.weight" not in names:
            raise ModelLoadError(f"{self.path}: tensor 'token_embd.weight' is missing")
        heads = int(self._require(prefix + "attention.head_count"))
        hidden = int(self._require(prefix + "embedding_length"))
        key_length = self.metadata(prefix + "attention.key_length")
        try:
            return ModelConfig(
                vocab_size=int(names["token_embd.weight"].shape[1]),
                hidden_size=hidden,
                intermediate_size=int(self._require(prefix + "feed_forward_length")),
                num_hidden_layers=int(self._require(prefix + "block_count")),
                num_attention_heads=heads,
                num_key_value_heads=int(self.metadata(prefix + "attention.head_count_kv", heads)),
                max_position_embeddings=int(self._require(prefix + "context_length")),
                rms_norm_eps=float(self._require(prefix + "attention.layer_norm_rms_epsilon")),
                rope_theta=float(self.metadata(prefix + "rope.freq_base", 10000.0)),
                tie_word_embeddings="output.weight" not in names,
                head_dim=int(key_length) if key_length is not None else None,
                bos_token_id=self.metadata("tokenizer.ggml.bos_token_id"),
                eos_token_id=self.metadata("tokenizer.ggml.eos_token_id"),
            )
        except ModelLoadError as exc:
            raise ModelLoadError(f"{self.path}: {exc}") from None

    def tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(HF name, float32 tensor) pairs, dequantized one at a time in file order."""
        for tensor in self.reader.tensors:
            name = hf_tensor_name(tensor.name)
            if name is None:
                raise ModelLoadError(f"{self.path}: unexpected tensor {tensor.name!r} for a qwen2 model")
            if tensor.tensor_type not in SUPPORTED_TYPES:
                raise UnsupportedModelError(
                    f"{self.path}: tensor {tensor.name!r} has type {tensor.tensor_type.name}, which qwq cannot read"
                )
            shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))  # GGUF lists dims fastest-first
            values = np.ascontiguousarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
            if not values.flags.writeable:  # F32 tensors come back as views of the read-only memory map
                values = values.copy()
            yield name, torch.from_numpy(values.reshape(shape))
