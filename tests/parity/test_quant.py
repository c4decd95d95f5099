"""Weight-only int8 / int4 on the real 0.5B model against its float32 self: logits agreement and greedy text.

Tolerances (measured on this model, see docs/benchmarks.md): int8 keeps top-1 agreement above 97% and
mean KL below 0.01 nats (measured 1.000, 0.0016); int4 (group 32) above 85% and below 0.1 nats
(measured 0.947, 0.049).
"""

from __future__ import annotations

import pytest
import torch

import qwq
from qwq.quant.linear import Int4Linear, Int8Linear
from qwq.weights.loader import build_empty

CORPUS = (
    "def quicksort(items):\n    if len(items) <= 1:\n        return items\n    pivot = items[0]\n"
    "    left = [x for x in items[1:] if x < pivot]\n    right = [x for x in items[1:] if x >= pivot]\n"
    "    return quicksort(left) + [pivot] + quicksort(right)\n\n"
    "The mitochondria is the powerhouse of the cell. In 1905, Einstein published four papers that changed "
    "physics: on the photoelectric effect, Brownian motion, special relativity, and mass-energy equivalence.\n"
    "中国的首都是北京。长城是世界上最长的建筑之一。"
)
PROMPTS = [
    "Write a Python function that checks whether a number is prime.",
    "What is the capital of France? Answer in one sentence.",
    "Explain the difference between a list and a tuple in Python.",
    "Write a haiku about autumn leaves.",
    "How do I reverse a linked list in C?",
]


@pytest.fixture(scope="module")
def int8_model(gguf_path) -> qwq.Model:
    """Loaded once for the module: quantizing every Linear is most of a quantized load."""
    return qwq.load(gguf_path, quant="int8")


@pytest.fixture(scope="module")
def int4_model(gguf_path) -> qwq.Model:
    return qwq.load(gguf_path, quant="int4")


@pytest.fixture(params=["int8", "int4"])
def quantized(request) -> tuple[str, qwq.Model]:
    return request.param, request.getfixturevalue(f"{request.param}_model")


def _agreement(reference: torch.Tensor, other: torch.Tensor) -> tuple[float, float]:
    top1 = (reference.argmax(-1) == other.argmax(-1)).float().mean().item()
    log_p, log_q = reference.log_softmax(-1), other.log_softmax(-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1).mean().item()
    return top1, kl


def test_every_linear_is_quantized(quantized):
    mode, model = quantized
    kind = Int8Linear if mode == "int8" else Int4Linear
    linears = [m for m in model.network.modules() if isinstance(m, torch.nn.Linear)]
    assert linears == []
    assert isinstance(model.network.lm_head, kind)
    layers, config = model.network.model.layers, model.config
    assert sum(isinstance(m, kind) for m in model.network.modules()) == 4 * len(layers) + 1  # q/k/v, gate/up fused
    heads = config.num_attention_heads + 2 * config.num_key_value_heads
    assert layers[0].self_attn.qkv_proj.out_features == heads * config.head_dim
    assert layers[0].mlp.gate_up_proj.out_features == 2 * config.intermediate_size
    assert all(layer.native_step is not None for layer in layers)  # decode runs each layer as one C++ call
    assert model.num_parameters() == sum(p.numel() for p in build_empty(model.config).parameters())


def test_logits_stay_close_to_float32(quantized, model):
    mode, quant_model = quantized
    ids = model.tokenizer.encode(CORPUS)
    top1, kl = _agreement(model.logits(ids), quant_model.logits(ids))
    print(f"\n{mode}: top-1 agreement {top1:.3f}, mean KL {kl:.4f} nats over {len(ids)} positions")
    limits = {"int8": (0.97, 0.01), "int4": (0.85, 0.1)}[mode]
    assert top1 >= limits[0] and kl <= limits[1]


def test_int8_greedy_text_matches_float32(int8_model, model):
    same = 0
    for prompt in PROMPTS:
        ids = model.tokenizer.encode(model.tokenizer.apply_chat_template([{"role": "user", "content": prompt}]))
        reference = model.generate(ids, max_new_tokens=32, temperature=0, ignore_eos=True)
        same += int8_model.generate(ids, max_new_tokens=32, temperature=0, ignore_eos=True) == reference
    assert same >= 3, f"only {same} of {len(PROMPTS)} greedy continuations match float32 for 32 tokens"
