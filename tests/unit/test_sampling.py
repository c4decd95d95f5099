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

from qwq.config import GenerationDefaults
from qwq.engine.processors import presence_frequency_penalty, repetition_penalty
from qwq.engine.request import GenerationParams, Request
from qwq.engine.sampling import filter_logits, make_generator, sample
from qwq.engine.sequence import SequenceState, TokenEvent
from qwq.errors import InvalidRequestError

VOCAB = 50


def _params(**fields) -> GenerationParams:
    """GenerationParams as the engine hands them to the sampler: every unset field filled with the neutral
    defaults (no top-k, top-p 1, no min-p, no penalty)."""
    return GenerationParams(**fields).resolved(GenerationDefaults(), prompt_length=1, loaded_context=64)


def _sequence(prompt: list[int], output: list[int], params: GenerationParams, vocab_size: int) -> SequenceState:
    """A sequence that has read `prompt` and written `output`, as the penalties see it."""
    sequence = SequenceState(
        Request(prompt, params), slot=0, tokenizer=None, vocab_size=vocab_size, device=torch.device("cpu")
    )
    for token in output:
        sequence.append(TokenEvent(token))
    return sequence


def _hf_filter(logits: torch.Tensor, params: GenerationParams) -> torch.Tensor:
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
        _params(temperature=0.7, top_k=5),
        _params(temperature=1.0, top_p=0.8),
        _params(temperature=0.5, top_p=0.3),
        _params(temperature=1.3, min_p=0.1),
        _params(temperature=0.7, top_k=20, top_p=0.8),
        _params(temperature=0.9, top_k=10, top_p=0.95, min_p=0.05),
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
    sequence = _sequence([0, 1], [1, 3], _params(repetition_penalty=1.3), vocab_size=6)  # prompt and output
    ours = repetition_penalty(sequence, logits)
    theirs = RepetitionPenaltyLogitsProcessor(1.3)(seen_ids[None], logits[None].clone())[0]
    assert torch.allclose(ours, theirs)


def test_presence_and_frequency_penalties_follow_openai():
    logits = torch.zeros(4)
    params = _params(presence_penalty=0.5, frequency_penalty=0.25)
    sequence = _sequence([0, 3, 3], [1, 2, 2, 2], params, vocab_size=4)  # output counts 0, 1, 3, 0; prompt ignored
    out = presence_frequency_penalty(sequence, logits)
    assert out.tolist() == [0.0, -0.75, -1.25, 0.0]


def test_greedy_takes_argmax():
    logits = torch.tensor([0.1, 3.0, 2.9, -1.0])
    assert sample(logits, _params(temperature=0.0), None) == 1


def test_sampling_frequencies_follow_the_filtered_distribution():
    logits = torch.tensor([2.0, 1.5, 1.0, 0.0, -1.0, -5.0])
    params = _params(temperature=0.8, top_k=4, seed=7)
    expected = filter_logits(logits, params).softmax(-1)
    generator = make_generator(params)
    draws = torch.tensor([sample(logits, params, generator) for _ in range(20000)])
    observed = torch.bincount(draws, minlength=6).float() / len(draws)
    assert observed[4:].sum() == 0  # filtered out by top_k
    assert (observed - expected).abs().max() < 0.015


def test_seed_makes_draws_reproducible():
    logits = torch.randn(VOCAB, generator=torch.Generator().manual_seed(3))
    params = _params(temperature=1.0, seed=42)
    first = [sample(logits, params, g) for g in [make_generator(params)] for _ in range(50)]
    second = [sample(logits, params, g) for g in [make_generator(params)] for _ in range(50)]
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
        GenerationParams(**kwargs)
