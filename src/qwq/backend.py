"""The step between loading and running: a loaded network made ready for the backend it runs on.

On CPU, quantized projections that read the same input are fused and each decoder layer gets its one-call
C++ decode step (quant/decode_path.py). This is the seam where tensor parallelism (sharding) and CUDA
(graphs, its own kernels) plug in; loading itself only reads and checks weights.
"""

from __future__ import annotations

from qwq.errors import InvalidRequestError
from qwq.model.qwen2 import Qwen2ForCausalLM
from qwq.quant.decode_path import prepare_quantized_decode

BACKENDS = ("cpu", "cuda", "meta")


def prepare(network: Qwen2ForCausalLM, backend: str | None = None) -> Qwen2ForCausalLM:
    """Ready `network` for `backend` (default: the device its weights are on); returns it."""
    backend = backend or network.model.norm.weight.device.type
    if backend not in BACKENDS:
        raise InvalidRequestError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "cpu":
        prepare_quantized_decode(network)
    return network
