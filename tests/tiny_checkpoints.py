"""Tiny Qwen2 checkpoints written on the fly: GGUF files of any tensor type, and HF directories.

The GGUF files are written with the `gguf` package's own writer (and its quantizers where it has them);
HF directories are saved by transformers itself, so both are independent of the code under test.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as QType
from gguf.quants import quantize
from transformers.convert_slow_tokenizer import bytes_to_unicode

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["h e", "l l", "he ll", "Ġ t"]
SHAPE = dict(hidden=256, heads=4, kv_heads=2, intermediate=512, layers=2, context=64)


def byte_level_tokens() -> list[str]:
    spelling = bytes_to_unicode()  # GPT-2's byte alphabet, from transformers
    return [spelling[b] for b in range(256)]


def vocabulary() -> tuple[list[str], list[int]]:
    tokens = byte_level_tokens() + ["he", "ll", "hell", "Ġt"] + SPECIALS
    types = [1] * (len(tokens) - len(SPECIALS)) + [3] * len(SPECIALS)
    return tokens, types


# a llama.cpp-like mix of types for a file quantized to Q4_K (Q4_K_M keeps V in Q6_K; the 0.5B has Q8_0 parts)
GGUF_MIX = {"attn_v.weight": QType.Q6_K, "ffn_down.weight": QType.Q8_0}
K_SCALE_OFFSETS = {QType.Q2_K: (80, 82), QType.Q3_K: (108,), QType.Q4_K: (0, 2), QType.Q5_K: (0, 2), QType.Q6_K: (208,)}


def _k_quant_blocks(qtype: QType, rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """Random K-quant blocks with small, finite scales (the gguf package cannot quantize K types)."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(rows, cols // block, size), dtype=np.uint8)
    scale = np.frombuffer(np.float16(0.0002).tobytes(), dtype=np.uint8)
    offsets = K_SCALE_OFFSETS[qtype]
    for offset in offsets:
        raw[:, :, offset : offset + 2] = scale
    return raw.reshape(rows, cols // block * size)


def gguf_blocks(type_name: str, rows: int, k: int, seed: int = 0) -> np.ndarray:
    """A [rows, k] tensor as a file would hold it: quantized by gguf where it can, else random blocks with small
    finite scales (every byte pattern is a valid K block)."""
    rng = np.random.default_rng(seed)
    qtype = QType[type_name]
    if qtype not in K_SCALE_OFFSETS:
        return quantize(rng.normal(0, 0.05, size=(rows, k)).astype(np.float32), qtype)
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(rows, k // block, size), dtype=np.uint8)
    for offset in K_SCALE_OFFSETS[qtype]:
        scale = rng.uniform(1e-4, 3e-3, size=(rows, k // block)).astype(np.float16)
        raw[:, :, offset : offset + 2] = scale.view(np.uint8).reshape(rows, k // block, 2)
    return raw.reshape(rows, -1)


def _encode(values: np.ndarray, qtype: QType, rng: np.random.Generator) -> np.ndarray:
    if qtype == QType.F32:
        return values.astype(np.float32)
    if qtype == QType.F16:
        return values.astype(np.float16)
    if qtype in K_SCALE_OFFSETS:
        return _k_quant_blocks(qtype, *values.shape, rng)
    return quantize(values, qtype)


def write_gguf(
    path: Path,
    weight_type: QType = QType.F32,
    architecture: str = "qwen2",
    tied: bool = False,
    seed: int = 0,
    model_name: str | None = None,
    context: int = SHAPE["context"],
    heads: int = SHAPE["heads"],
    rms_norm_eps: float = 1e-6,
    types: dict[str, QType] | None = None,
    extra_tokens: int = 0,
) -> Path:
    """A 2-layer Qwen2 GGUF whose matrices are stored as `weight_type` (norms and biases stay F32), or as
    `types[name]` for GGUF tensor names ending in `name` (as llama.cpp's mixes store V or down in another type);
    `model_name` goes to the metadata's general.name; `context` is its trained context; `heads` and
    `rms_norm_eps` change only the metadata (for checkpoints that lie about themselves); `extra_tokens`
    unused control tokens pad the vocabulary (9 make it 272: an LM head every quantized layout can hold)."""
    rng = np.random.default_rng(seed)
    hidden, kv_heads = SHAPE["hidden"], SHAPE["kv_heads"]
    head_dim = hidden // SHAPE["heads"]
    tokens, token_types = vocabulary()
    tokens += [f"<|extra_{i}|>" for i in range(extra_tokens)]
    token_types += [3] * extra_tokens
    writer = gguf.GGUFWriter(str(path), architecture)
    if model_name is not None:
        writer.add_name(model_name)
    writer.add_block_count(SHAPE["layers"])
    writer.add_context_length(context)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(SHAPE["intermediate"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(rms_norm_eps)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(tokens.index("<|endoftext|>"))
    writer.add_eos_token_id(tokens.index("<|im_end|>"))
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHATML)

    def matrix(name: str, rows: int, cols: int) -> None:
        values = rng.normal(0.0, 0.05, size=(rows, cols)).astype(np.float32)
        qtype = next((t for suffix, t in (types or {}).items() if name.endswith(suffix)), weight_type)
        data = _encode(values, qtype, rng)
        if qtype in (QType.F32, QType.F16):
            writer.add_tensor(name, data)
        else:
            writer.add_tensor(name, data, raw_dtype=qtype)  # shape follows from the byte shape

    def vector(name: str, size: int, mean: float = 0.0) -> None:
        writer.add_tensor(name, (mean + rng.normal(0.0, 0.05, size=size)).astype(np.float32))

    matrix("token_embd.weight", len(tokens), hidden)
    for layer in range(SHAPE["layers"]):
        prefix = f"blk.{layer}."
        vector(prefix + "attn_norm.weight", hidden, 1.0)
        matrix(prefix + "attn_q.weight", hidden, hidden)
        vector(prefix + "attn_q.bias", hidden)
        matrix(prefix + "attn_k.weight", kv_heads * head_dim, hidden)
        vector(prefix + "attn_k.bias", kv_heads * head_dim)
        matrix(prefix + "attn_v.weight", kv_heads * head_dim, hidden)
        vector(prefix + "attn_v.bias", kv_heads * head_dim)
        matrix(prefix + "attn_output.weight", hidden, hidden)
        vector(prefix + "ffn_norm.weight", hidden, 1.0)
        matrix(prefix + "ffn_gate.weight", SHAPE["intermediate"], hidden)
        matrix(prefix + "ffn_up.weight", SHAPE["intermediate"], hidden)
        matrix(prefix + "ffn_down.weight", hidden, SHAPE["intermediate"])
    vector("output_norm.weight", hidden, 1.0)
    if not tied:
        matrix("output.weight", len(tokens), hidden)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_hf_dir(directory: Path, gguf_file: Path, max_shard_size: str | None = None) -> Path:
    """An HF checkpoint directory saved by transformers from a tiny GGUF (safetensors, tokenizer, config)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    # A GGUF-loaded model refuses to save; a plain copy with the same weights saves as safetensors.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict())
    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(directory, **kwargs)
    tokenizer.save_pretrained(directory)
    return directory
