"""Which sequences the next engine step feeds, under a token budget, and which waiting requests get a slot.

As in vLLM there are no separate prefill and decode phases: each running sequence has tokens the cache does
not hold yet (a prompt, one sampled token, forced tokens), and a step feeds every one-token sequence together
plus at most `prefill_chunk` tokens of the longer ones, in arrival order. A long prompt is prefilled a chunk
per step while the running streams keep producing tokens. A sequence's chunks are cut the same way however
busy the engine is (its own length and the chunk size decide), so a request computes the same numbers
batched as alone.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from qwq.engine.request import Request
from qwq.engine.sequence import SequenceState


@dataclass
class StepPlan:
    decode: list[SequenceState] = field(default_factory=list)  # one token each, batched in one forward
    prefill: list[tuple[SequenceState, int]] = field(default_factory=list)  # (sequence, tokens this step)


class Scheduler:
    def __init__(self, max_batch: int, prefill_chunk: int) -> None:
        self.max_batch = max_batch
        self.prefill_chunk = prefill_chunk
        self.waiting: deque[Request] = deque()
        self.running: list[SequenceState] = []

    def free_slots(self) -> list[int]:
        return sorted(set(range(self.max_batch)) - {s.slot for s in self.running})

    def plan(self) -> StepPlan:
        plan = StepPlan()
        used = 0
        for sequence in self.running:
            pending = len(sequence.pending)
            if pending == 1:
                plan.decode.append(sequence)
                continue
            # chunks end on a grid of the chunk size, so a prompt resumed after a cached prefix is cut as it
            # would be from its start (prefix_cache.py)
            chunk = min(pending, self.prefill_chunk - sequence.num_computed % self.prefill_chunk)
            if used + chunk <= self.prefill_chunk or not plan.prefill:
                plan.prefill.append((sequence, chunk))
                used += chunk
        return plan
