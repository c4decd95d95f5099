"""Speculative decoding without a draft model: draft tokens by prompt lookup, verified by the model itself.

Where the output copies its input (a code edit restating the code, a reasoning model restating the problem),
the tokens after the last few written often occurred before: find the most recent earlier occurrence of the
sequence's last n tokens (n from MAX_NGRAM down to MIN_NGRAM) in its prompt and output, and draft the tokens
that followed it. The engine feeds the drafts as extra one-token rows of the same sequence (same slot, next
positions) in the step's batched forward, where each row computes exactly what one decode step computes,
and keeps a draft only while the token chosen at each row (by the sequence's own processors and sampler)
equals it: greedy and seeded sampled output are token for token what plain decoding gives, and the
distribution is preserved (a draft is kept exactly when the sampled token is the draft).

A draft that fails costs rows of compute for nothing, so each sequence adapts: the draft grows while drafts
are kept, shrinks when they are not, and drafting pauses (for longer each time) while few are kept — on
open-ended text it is soon off.
"""

from __future__ import annotations

from collections.abc import Sequence

MIN_NGRAM = 2
MAX_NGRAM = 4
MAX_DRAFT = 8
_KEEP_FLOOR = 0.3  # drafting pauses while the running share of drafted tokens kept is below this
_FIRST_PAUSE, _LONGEST_PAUSE = 8, 256  # steps


class PromptLookupDrafter:
    """One sequence's drafter: an index of where each n-gram last ended, kept up to date as tokens come."""

    def __init__(self) -> None:
        self._last_end: dict[tuple[int, ...], int] = {}  # n-gram -> the index right after its latest occurrence
        self._indexed = 0  # n-grams ending at indices <= this are in the index
        self._length = 4  # tokens to draft next time
        self._kept_share = 1.0  # running share of drafted tokens kept
        self._pause = 0  # steps left without drafting
        self._next_pause = _FIRST_PAUSE

    def draft(self, tokens: Sequence[int], limit: int) -> list[int]:
        """Up to min(limit, the adaptive length) tokens that may follow `tokens`; [] when there is no match or
        drafting is paused."""
        self._index(tokens)
        if self._pause:
            self._pause -= 1
            return []
        count = min(limit, self._length)
        if count < 1:
            return []
        end = len(tokens)
        for n in range(min(MAX_NGRAM, end - 1), MIN_NGRAM - 1, -1):
            suffix = tuple(tokens[end - n :])
            found = self._last_end.get(suffix)
            # the entry may predate a rollback: use it only if those tokens are still there
            if found is not None and found < end and tuple(tokens[found - n : found]) == suffix:
                return list(tokens[found : min(found + count, end)])
        return []

    def record(self, drafted: int, kept: int) -> None:
        """How the last draft fared: `kept` of its `drafted` tokens matched."""
        if not drafted:
            return
        self._kept_share = 0.6 * self._kept_share + 0.4 * (kept / drafted)
        self._length = min(MAX_DRAFT, self._length + 2) if kept == drafted else max(1, kept + 1)
        if self._kept_share < _KEEP_FLOOR:
            self._pause, self._next_pause = self._next_pause, min(_LONGEST_PAUSE, 2 * self._next_pause)
            self._kept_share = 0.5  # after the pause, a few drafts decide again
        elif kept * 2 >= drafted:
            self._next_pause = _FIRST_PAUSE

    def _index(self, tokens: Sequence[int]) -> None:
        """Add the n-grams ending before the last token (the suffix looked up is not its own match)."""
        end = len(tokens) - 1
        self._indexed = min(self._indexed, end)  # a rollback shortened the tokens
        for stop in range(self._indexed + 1, end + 1):
            for n in range(MIN_NGRAM, min(MAX_NGRAM, stop) + 1):
                self._last_end[tuple(tokens[stop - n : stop])] = stop
        self._indexed = max(self._indexed, end)
