"""Choosing the next token: temperature, top-k, top-p, min-p, then a seeded draw.

Semantics follow the tools people compare us with: the warpers run in HF's order (temperature, top-k, top-p,
min-p); temperatures under `GREEDY_BELOW` are greedy. Penalties are logits processors (processors.py).
"""

from __future__ import annotations

import math

import torch

from qwq.engine.request import GenerationParams
from qwq.errors import GenerationError


def make_generator(params: GenerationParams, device: torch.device | str = "cpu") -> torch.Generator | None:
    """A random generator on the device the logits live on (seeded when a seed was given); None for greedy."""
    if params.greedy:
        return None
    generator = torch.Generator(device=device)
    if params.seed is None:
        generator.seed()
    else:
        generator.manual_seed(params.seed)
    return generator


def filter_logits(logits: torch.Tensor, params: GenerationParams) -> torch.Tensor:
    """Temperature and the truncation filters; removed tokens get -inf. logits: (V,) float32."""
    logits = logits / params.temperature
    if 0 < (params.top_k or 0) < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if params.top_p is not None and params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = sorted_logits.softmax(-1)
        # Drop a token when the tokens ranked above it already hold top_p of the mass; the first always stays.
        drop_sorted = (probs.cumsum(-1) - probs) > params.top_p
        drop = torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted)
        logits = logits.masked_fill(drop, -math.inf)
    if params.min_p:
        probs = logits.softmax(-1)
        logits = logits.masked_fill(probs < params.min_p * probs.max(), -math.inf)
    return logits


def sample(logits: torch.Tensor, params: GenerationParams, generator: torch.Generator | None) -> int:
    """The next token id from final-position logits (V,), already processed; refuses logits with no number
    to choose by (a checkpoint with NaN weights gives NaN everywhere)."""
    best = torch.argmax(logits)
    if not math.isfinite(float(logits[best])):
        raise GenerationError("the model produced no finite logits (NaN or infinite weights or activations)")
    if params.greedy:
        return int(best)
    probs = filter_logits(logits.float(), params).softmax(-1)
    return int(torch.multinomial(probs, 1, generator=generator))
