"""How much memory a model will need before it is loaded, a clear refusal when it will not fit, and handing
freed heap pages back while loading.

The estimate is read off the model built on the `meta` device (after any quantization swap), so it knows
every stored byte exactly: float parameters at the load dtype, packed quantized weights and their scales.
To that it adds the KV cache for the whole chosen context (in the model's KV dtype: bfloat16 for quantized
models, see `Qwen2ForCausalLM.kv_cache_dtype`), what loading holds at once besides the weights (a float tensor
being converted; for quantized layers, float32 blocks of rows), and the runtime itself. Available memory is the
OS's MemAvailable (or the GPU's free memory), optionally capped by `QWQ_MAX_MEMORY_GIB`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from qwq.errors import InsufficientMemoryError, InvalidRequestError
from qwq.model.kv_cache import KVCache
from qwq.model.qwen2 import Qwen2ForCausalLM
from qwq.quant.gguf_linear import GGUFEmbedding, GGUFLinear
from qwq.quant.linear import _ROWS_PER_CHUNK as QUANTIZED_ROWS_PER_BLOCK
from qwq.quant.linear import QuantizedLinear
from qwq.weights.gguf import RAW_ROWS_PER_BLOCK

GIB = 1 << 30
RUNTIME_OVERHEAD_BYTES = int(0.5 * GIB)  # the interpreter, torch and tokenizer, measured ~0.4 GiB here
# A quantized layer is quantized from float32 a block of rows at a time, as its checkpoint hands them over: the
# block as read, its dequantized values and the quantizer's temporaries are held at once. Measured: loading the
# 1.5B to int4 peaks 0.2 GiB above its weights, runtime and tokenizer, six blocks of its widest layer (8960).
QUANTIZING_BLOCK_COPIES = 6


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int
    kv_cache: int
    loading_transient: int
    kv_dtype: torch.dtype = torch.float32
    runtime: int = RUNTIME_OVERHEAD_BYTES

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.loading_transient + self.runtime

    def describe(self) -> str:
        return (
            f"{self.total / GIB:.1f} GiB (weights {self.weights / GIB:.1f}, "
            f"KV cache {self.kv_cache / GIB:.1f} in {dtype_name(self.kv_dtype)}, "
            f"loading {self.loading_transient / GIB:.1f}, runtime {self.runtime / GIB:.1f})"
        )


def estimate(network: Qwen2ForCausalLM, dtype: torch.dtype, context_length: int) -> MemoryEstimate:
    """Bytes `network` (built on meta, quantized or not) will take once loaded in `dtype` for `context_length`."""
    element = torch.empty((), dtype=dtype).element_size()
    parameters = {id(p): p for p in network.parameters()}  # a tied LM head is stored once
    quantized = any(isinstance(m, QuantizedLinear) for m in network.modules())
    weights = sum(p.numel() * element for p in parameters.values())
    if quantized:  # the embedding table is kept in bfloat16 (see weights/loader.py)
        weights -= network.model.embed_tokens.weight.numel() * max(element - 2, 0)
    weights += sum(b.numel() * b.element_size() for b in network.buffers())  # quantized weights keep their dtype
    if quantized:
        widest = max(m.in_features for m in network.modules() if isinstance(m, QuantizedLinear))
        transient = QUANTIZING_BLOCK_COPIES * QUANTIZED_ROWS_PER_BLOCK * widest * 4
    else:  # a layer kept at the file's bits is packed from one block of its raw rows at a time
        floats = [*parameters.values(), *(b for b in network.buffers() if b.dtype.is_floating_point)]
        transient = max(max(t.numel() for t in floats) * element, _raw_block_bytes(network))
    kv_dtype = network.kv_cache_dtype or dtype
    kv_cache = KVCache.bytes_per_position(network.config, kv_dtype) * context_length
    return MemoryEstimate(weights=weights, kv_cache=kv_cache, loading_transient=transient, kv_dtype=kv_dtype)


def _raw_block_bytes(network: Qwen2ForCausalLM) -> int:
    """The largest block of a GGUF tensor's raw rows that loading holds while packing a layer kept at its bits."""
    layers = [m for m in network.modules() if isinstance(m, GGUFLinear | GGUFEmbedding)]
    return max((RAW_ROWS_PER_BLOCK * sum(p.shape[1] for p in m.planes) for m in layers), default=0)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def available_bytes(device: torch.device) -> int:
    """Memory the model may use on `device`: free GPU memory, or MemAvailable; `QWQ_MAX_MEMORY_GIB` caps both."""
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else _mem_available()
    cap = os.environ.get("QWQ_MAX_MEMORY_GIB")
    if cap:
        try:
            limit = float(cap)
        except ValueError:
            raise InvalidRequestError(f"QWQ_MAX_MEMORY_GIB must be a number of GiB, got {cap!r}") from None
        free = min(free, int(limit * GIB))
    return free


def _mem_available() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def check_fits(need: MemoryEstimate, device: torch.device, source: str, quantized: bool, context_length: int) -> None:
    """Refuse, before any weight is read, to load a model that will not fit; the message says what would."""
    have = available_bytes(device)
    if need.total <= have:
        return
    hints = [] if quantized else ["--quant int4 (about a quarter of bfloat16's weight memory)"]
    if need.kv_cache > GIB:
        if need.kv_dtype.itemsize > 2:
            hints.append("--kv-cache bf16 (half the KV cache's memory)")
        hints.append(f"a shorter context than {context_length} tokens (--ctx)")
    hint = f"; try {' or '.join(hints)}" if hints else ""
    raise InsufficientMemoryError(
        f"{source} needs about {need.describe()}, but only {have / GIB:.1f} GiB is available on {device.type}{hint}"
    )
