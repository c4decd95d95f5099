"""Logits processors: functions of a sequence's state and its logits, run before sampling, in one chain.

The penalties live here (as mlx-lm keeps them: functions of the token history, not loop state), so the
reasoning controls, grammar masks and anything else added later plug into the same chain.
"""

from __future__ import annotations

import torch

from qwq.engine.request import GenerationParams, LogitsProcessor
from qwq.engine.sequence import SequenceState


def repetition_penalty(sequence: SequenceState, logits: torch.Tensor) -> torch.Tensor:
    """HF's: a token seen in the prompt or output has positive logits divided, negative ones multiplied."""
    penalty = sequence.params.repetition_penalty
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(sequence.seen_mask(), penalised, logits)


def presence_frequency_penalty(sequence: SequenceState, logits: torch.Tensor) -> torch.Tensor:
    """OpenAI's: subtract frequency x count and presence x (count > 0), over output tokens only."""
    params = sequence.params
    counts = sequence.output_counts().to(logits.dtype)
    return logits - params.frequency_penalty * counts - params.presence_penalty * (counts > 0).to(logits.dtype)


def default_chain(params: GenerationParams) -> tuple[LogitsProcessor, ...]:
    """The processors a request's own params call for (none at all when it has no penalty)."""
    chain: list[LogitsProcessor] = []
    if params.repetition_penalty not in (None, 1.0):
        chain.append(repetition_penalty)
    if params.presence_penalty or params.frequency_penalty:
        chain.append(presence_frequency_penalty)
    return tuple(chain)
