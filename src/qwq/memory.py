"""How much memory a model will need before it is loaded, a clear refusal when it will not fit, and handing
freed heap pages back while loading.

The estimate is read off the model built on the `meta` device (after any quantization swap), so it knows
every stored byte exactly: float parameters at the load dtype, packed quantized weights and their scales.
To that it adds the KV cache for the whole chosen context, the largest tensor held at once while loading
(in float32 when it is quantized), and the runtime itself. Available memory is the OS's MemAvailable (or
the GPU's free memory), optionally capped by `QWQ_MAX_MEMORY_GIB`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from qwq.errors import InsufficientMemoryError, InvalidRequestError
from qwq.model.qwen2 import Qwen2ForCausalLM
from qwq.quant.linear import QuantizedLinear

GIB = 1 << 30
RUNTIME_OVERHEAD_BYTES = int(0.5 * GIB)  # the interpreter, torch and tokenizer, measured ~0.4 GiB here


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int
    kv_cache: int
    loading_transient: int
    runtime: int = RUNTIME_OVERHEAD_BYTES

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.loading_transient + self.runtime

    def describe(self) -> str:
        return (
            f"{self.total / GIB:.1f} GiB (weights {self.weights / GIB:.1f}, KV cache {self.kv_cache / GIB:.1f}, "
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
    # quantization starts from a float32 copy of each tensor; a GGUF kept at its bits is read a block of rows at a time
    largest = max(t.numel() for t in [*parameters.values(), *(network.buffers() if quantized else ())])
    transient = largest * (4 if quantized else element)
    config = network.config
    kv_cache = 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * context_length * element
    return MemoryEstimate(weights=weights, kv_cache=kv_cache, loading_transient=transient)


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
        hints.append(f"a shorter context than {context_length} tokens (--ctx)")
    hint = f"; try {' or '.join(hints)}" if hints else ""
    raise InsufficientMemoryError(
        f"{source} needs about {need.describe()}, but only {have / GIB:.1f} GiB is available on {device.type}{hint}"
    )
