"""Qwen2 GGUF checkpoints (llama.cpp's format): the model config from the metadata, and the tensors
under HF names.

Tensors are read one at a time and dequantized (by the `gguf` package) in row chunks straight into
the target dtype, so loading holds the final weights plus one chunk, never a second full copy; a weight
that a quantized layer takes comes as blocks of rows it quantizes one at a time, and one that a layer keeps
at the file's bits (qwq.quant.gguf_linear) comes as its raw blocks, a block of rows at a time.
llama.cpp's converter stores Qwen2's Q/K projections unpermuted, so no reordering is needed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGMLQuantizationType
from gguf.quants import dequantize

from qwq.config import ModelConfig
from qwq.errors import ModelLoadError, UnsupportedModelError
from qwq.weights.gguf_container import TensorInfo, read_header

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
_CHUNK_ELEMENTS = 1 << 22  # rows are dequantized in chunks of about this many values

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


RAW_ROWS_PER_BLOCK = 4096  # rows of a GGUF tensor's own bytes handed over at once to a layer kept at its bits


@dataclass(frozen=True)
class RowBlocks:
    """A 2-D weight handed over as float32 blocks of rows, each read and dequantized when its turn comes: a
    quantized layer quantizes block by block, so no float copy of the whole weight ever exists (the LM head's
    alone is 0.9 GB for a 1.5B model, 3 GB for QwQ-32B)."""

    shape: tuple[int, int]
    read: Callable[[int, int], torch.Tensor]  # rows [start, end) as float32
    rows_per_block: int = 1024  # a multiple of the native layouts' four rows

    def __iter__(self) -> Iterator[torch.Tensor]:
        for start in range(0, self.shape[0], self.rows_per_block):
            yield self.read(start, min(start + self.rows_per_block, self.shape[0]))


@dataclass(frozen=True)
class RawBlocks:
    """A 2-D quantized tensor handed over as the file's own bytes, (first row, uint8 [rows, bytes per row]) blocks
    each read when its turn comes: a layer that keeps the file's bits packs them block by block, so neither a
    float copy nor a second copy of the whole tensor exists."""

    shape: tuple[int, int]
    qtype: GGMLQuantizationType
    read: Callable[[int, int], torch.Tensor]  # rows [start, end) as raw bytes
    rows_per_block: int = RAW_ROWS_PER_BLOCK

    def __iter__(self) -> Iterator[tuple[int, torch.Tensor]]:
        for start in range(0, self.shape[0], self.rows_per_block):
            yield start, self.read(start, min(start + self.rows_per_block, self.shape[0]))


class GGUFFile:
    """An opened, validated Qwen2 GGUF file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if not path.is_file():
            raise ModelLoadError(f"{path}: file not found")
        self._metadata, self.tensor_infos = read_header(path)
        architecture = self.metadata("general.architecture")
        if architecture != "qwen2":
            raise UnsupportedModelError(
                f"{path}: GGUF architecture {architecture!r} is not supported; qwq runs 'qwen2' checkpoints"
            )

    def metadata(self, key: str, default: Any = None) -> Any:
        return self._metadata.get(key, default)

    def _require(self, key: str) -> Any:
        value = self.metadata(key)
        if value is None:
            raise ModelLoadError(f"{self.path}: metadata {key!r} is missing")
        return value

    def model_config(self) -> ModelConfig:
        prefix = "qwen2."
        names = {t.name: t for t in self.tensor_infos}
        if "token_embd.weight" not in names:
            raise ModelLoadError(f"{self.path}: tensor 'token_embd.weight' is missing")
        layers = {int(m.group(1)) for m in (_LAYER_PATTERN.fullmatch(t.name) for t in self.tensor_infos) if m}
        block_count = self._require(prefix + "block_count")
        if layers != set(range(len(layers))) or block_count != len(layers):
            raise ModelLoadError(
                f"{self.path}: metadata says {block_count} layers, the tensors describe {len(layers)} "
                f"(indices {sorted(layers)[:3]}...{sorted(layers)[-3:]})"
            )
        hidden = self._require(prefix + "embedding_length")
        if hidden != names["token_embd.weight"].shape[1]:
            raise ModelLoadError(
                f"{self.path}: metadata embedding_length {hidden} does not match token_embd.weight's "
                f"shape {names['token_embd.weight'].shape}"
            )
        try:
            heads = int(self._require(prefix + "attention.head_count"))
            key_length = self.metadata(prefix + "attention.key_length")
            return ModelConfig(
                vocab_size=names["token_embd.weight"].shape[0],
                hidden_size=hidden,
                intermediate_size=int(self._require(prefix + "feed_forward_length")),
                num_hidden_layers=block_count,
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
        except (ModelLoadError, TypeError, ValueError) as exc:
            raise ModelLoadError(f"{self.path}: metadata does not describe a valid model: {exc}") from None

    def _read(self, info: TensorInfo, dtype: torch.dtype) -> torch.Tensor:
        rows = math.prod(info.shape[:-1])
        out = torch.empty((rows, info.shape[-1]), dtype=dtype)
        step = max(1, _CHUNK_ELEMENTS // info.shape[-1])
        for first in range(0, rows, step):  # only one chunk's raw bytes and float32 values at a time
            out[first : first + step] = self._read_rows(info, first, min(first + step, rows))
        return out.reshape(info.shape)

    def _read_raw(self, info: TensorInfo, start: int, end: int) -> torch.Tensor:
        """The bytes of rows [start, end) of the tensor seen as (rows, last dimension), read alone."""
        rows = math.prod(info.shape[:-1])
        row_bytes = info.n_bytes // rows  # one row of blocks per output row
        offset, count = info.offset + start * row_bytes, (end - start) * row_bytes
        raw = np.fromfile(self.path, dtype=np.uint8, count=count, offset=offset)
        return torch.from_numpy(raw.reshape(end - start, row_bytes))

    def _read_rows(self, info: TensorInfo, start: int, end: int) -> torch.Tensor:
        """Rows [start, end) of the tensor seen as (rows, last dimension), as float32, reading only their bytes."""
        chunk = dequantize(self._read_raw(info, start, end).numpy(), info.qtype)
        return torch.from_numpy(np.ascontiguousarray(chunk, dtype=np.float32)).reshape(end - start, info.shape[-1])

    def tensor_types(self) -> dict[str, GGMLQuantizationType]:
        """The stored type of each tensor, by HF name."""
        return {name: info.qtype for info in self.tensor_infos if (name := hf_tensor_name(info.name)) is not None}

    def tensors(
        self,
        dtype: torch.dtype = torch.float32,
        dtypes: dict[str, torch.dtype] | None = None,
        row_blocks: Collection[str] = (),
        raw_blocks: Collection[str] = (),
    ) -> Iterator[tuple[str, torch.Tensor | RowBlocks | RawBlocks]]:
        """(HF name, tensor in `dtype`, or in `dtypes[name]` where given) pairs, read and dequantized one at a time
        in file order; the 2-D tensors named in `row_blocks` come as `RowBlocks` (for quantized layers), those in
        `raw_blocks` as `RawBlocks` (for layers that keep the file's bits)."""
        for info in self.tensor_infos:
            name = hf_tensor_name(info.name)
            if name is None:
                raise ModelLoadError(f"{self.path}: unexpected tensor {info.name!r} for a qwen2 model")
            if info.qtype not in SUPPORTED_TYPES:
                raise UnsupportedModelError(
                    f"{self.path}: tensor {info.name!r} has type {info.qtype.name}, which qwq cannot read"
                )
            if name in raw_blocks and len(info.shape) == 2:
                yield name, RawBlocks(tuple(info.shape), info.qtype, partial(self._read_raw, info))
            elif name in row_blocks and len(info.shape) == 2:
                yield name, RowBlocks(tuple(info.shape), partial(self._read_rows, info))
            else:
                yield name, self._read(info, (dtypes or {}).get(name, dtype))
