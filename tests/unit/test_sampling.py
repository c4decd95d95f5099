"""Samplers on hand-made distributions, checked against HF transformers' logits processors."""

from __future__ import annotations

import math

import pytest
import torch
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from qwq.engine.sampling import SamplingParams, apply_penalties, filter_logits, sample
from qwq.errors import InvalidRequestError

VOCAB = 50


def _hf_filter(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    scores = logits[None].clone()
    warpers = [TemperatureLogitsWarper(params.temperature)]
    if params.top_k:
        warpers.append(TopKLogitsWarper(params.top_k))
    if params.top_p < 1:
        warpers.append(TopPLogitsWarper(params.top_p))
    if params.min_p:
        warpers.append(MinPLogitsWarper(params.min_p))
    for warper in warpers:
        scores = warper(None, scores)
    return scores[0]


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=0.7, top_k=5),
        SamplingParams(temperature=1.0, top_p=0.8),
        SamplingParams(temperature=0.5, top_p=0.3),
        SamplingParams(temperature=1.3, min_p=0.1),
        SamplingParams(temperature=0.7, top_k=20, top_p=0.8),
        SamplingParams(temperature=0.9, top_k=10, top_p=0.95, min_p=0.05),
    ],
)
def test_filters_keep_the_same_tokens_as_transformers(params):
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        logits = torch.randn(VOCAB, generator=generator) * 3
        ours, theirs = filter_logits(logits, params), _hf_filter(logits, params)
        assert torch.equal(torch.isinf(ours), torch.isinf(theirs))
        kept = ~torch.isinf(ours)
        assert torch.allclose(ours[kept].softmax(-1), theirs[kept].softmax(-1), atol=1e-6)


def test_repetition_penalty_matches_transformers():
    logits = torch.tensor([2.0, -1.0, 0.5, -3.0, 1.0, 0.0])
    seen_ids = torch.tensor([0, 1, 1, 3])
    params = SamplingParams(repetition_penalty=1.3)
    seen = torch.zeros(6, dtype=torch.bool)
    seen[seen_ids] = True
    ours = apply_penalties(logits, params, seen, torch.zeros(6, dtype=torch.int32))
    theirs = RepetitionPenaltyLogitsProcessor(1.3)(seen_ids[None], logits[None].clone())[0]
    assert torch.allclose(ours, theirs)


def test_presence_and_frequency_penalties_follow_openai():
    logits = torch.zeros(4)
    counts = torch.tensor([0, 1, 3, 0], dtype=torch.int32)
    params = SamplingParams(presence_penalty=0.5, frequency_penalty=0.25)
    out = apply_penalties(logits, params, torch.zeros(4, dtype=torch.bool), counts)
    assert out.tolist() == [0.0, -0.75, -1.25, 0.0]


def test_greedy_takes_argmax():
    logits = torch.tensor([0.1, 3.0, 2.9, -1.0])
    assert sample(logits, SamplingParams(temperature=0.0), None) == 1


def test_sampling_frequencies_follow_the_filtered_distribution():
    logits = torch.tensor([2.0, 1.5, 1.0, 0.0, -1.0, -5.0])
    params = SamplingParams(temperature=0.8, top_k=4, seed=7)
    expected = filter_logits(logits, params).softmax(-1)
    generator = params.make_generator()
    draws = torch.tensor([sample(logits, params, generator) for _ in range(20000)])
    observed = torch.bincount(draws, minlength=6).float() / len(draws)
    assert observed[4:].sum() == 0  # filtered out by top_k
    assert (observed - expected).abs().max() < 0.015


def test_seed_makes_draws_reproducible():
    logits = torch.randn(VOCAB, generator=torch.Generator().manual_seed(3))
    params = SamplingParams(temperature=1.0, seed=42)
    first = [sample(logits, params, g) for g in [params.make_generator()] for _ in range(50)]
    second = [sample(logits, params, g) for g in [params.make_generator()] for _ in range(50)]
    assert first == second


@pytest.mark.parametrize(
    "kwargs",
    [
        {"temperature": -0.1},
        {"temperature": math.nan},
        {"top_p": 0.0},
        {"top_p": 1.5},
        {"top_k": -1},
        {"top_k": 2.5},
        {"min_p": 2.0},
        {"repetition_penalty": 0.0},
        {"presence_penalty": 3.0},
        {"seed": "x"},
        {"temperature": "hot"},
    ],
)
def test_bad_parameters_are_refused_by_name(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(InvalidRequestError, match=name):
        SamplingParams(**kwargs)
