"""One sequence's state inside the engine: its tokens, how many of them the KV cache holds, the tokens it
must be fed without sampling, its penalty counts, its text so far and how it finished.

The engine feeds every sequence the same way: the tokens past `num_computed` (the whole prompt at first, then
the one just sampled, or that one plus forced tokens) go through the model, and the logits after the last
of them choose the next token. So prefill, decode, forced tokens and a rollback are one mechanism.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

import torch

from qwq.engine.detokenizer import IncrementalDetokenizer
from qwq.engine.drafting import PromptLookupDrafter
from qwq.engine.request import FINISH_REASONS, GenerationParams, Request
from qwq.engine.stop_strings import StopStringMatcher
from qwq.errors import InvalidRequestError
from qwq.tokenizer.tokenizer import Tokenizer


@dataclass(frozen=True)
class Notice:
    """Something a reasoning control did to a sequence, at output token `at`: kind ("loop", "budget",
    "thinking_extended", "language", "content_filter"), a message for people, and details for APIs."""

    kind: str
    message: str
    at: int
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TokenEvent:
    """One new token, with its log-probability and the top alternatives when they were asked for (none for a
    forced token, which was not sampled)."""

    token: int
    logprob: float | None = None
    top_logprobs: tuple[tuple[int, float], ...] = ()


class SequenceState:
    def __init__(
        self, request: Request, slot: int, tokenizer: Tokenizer | None, vocab_size: int, device: torch.device
    ) -> None:
        self.request = request
        self.params: GenerationParams = request.params
        self.slot = slot
        self.token_ids: list[int] = list(request.prompt_ids)
        self.prompt_length = len(request.prompt_ids)
        self.num_computed = 0  # tokens whose keys and values are in the cache
        self.finish_reason: str | None = None
        self.error: str | None = None
        self.rolled_back = 0  # output tokens dropped by rollbacks so far
        self.generator: torch.Generator | None = None
        self.cached_tokens = 0  # prompt tokens whose entries came from the prefix cache
        self.drafter: PromptLookupDrafter | None = None  # speculative decoding, where the engine runs it
        self._vocab_size = vocab_size
        self._device = device
        self._counts: torch.Tensor | None = None
        self._prompt_seen: torch.Tensor | None = None
        self._end_ids = self.params.end_ids
        self._tokenizer = tokenizer
        self._detokenizer = IncrementalDetokenizer(tokenizer) if tokenizer is not None else None
        self._stops = StopStringMatcher(self.params.stop)
        self._pieces: list[str] = []  # the text each output token released (stop strings applied)
        self._ends: list[int] = []  # characters of text after each output token
        self._text: list[str] = []  # text ready to hand out, from character `_handed_chars` on
        self._events: list[TokenEvent] = []  # visible tokens not yet handed out
        self._handed = 0  # output ids handed out (a rollback can take this back)
        self._handed_chars = 0  # characters of text handed out (a rollback can take these back too)
        self.notices: list[Notice] = []  # what the reasoning controls did, not yet handed out

    # -- what the engine reads
    @property
    def output_ids(self) -> list[int]:
        return self.token_ids[self.prompt_length :]

    @property
    def num_output(self) -> int:
        return len(self.token_ids) - self.prompt_length

    @property
    def pending(self) -> list[int]:
        """Tokens to feed the model before the next token can be chosen."""
        return self.token_ids[self.num_computed :]

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def text_length(self) -> int:
        """Characters of text the output tokens have released so far."""
        return self._ends[-1] if self._ends else 0

    def text_from(self, offset: int) -> str:
        """The output's text from character `offset` on (what a token hook reads of the newest text)."""
        index = bisect.bisect_right(self._ends, offset)
        start = self._ends[index - 1] if index else 0
        return "".join(self._pieces[index:])[offset - start :]

    def text_length_at(self, tokens: int) -> int:
        """Characters of text the first `tokens` output tokens released."""
        return self._ends[tokens - 1] if tokens else 0

    def token_at(self, offset: int) -> int:
        """The index (in the output) of the token whose text holds character `offset`."""
        return bisect.bisect_right(self._ends, offset)

    def take_output(self) -> tuple[str, int, list[TokenEvent], int, list[int], list[Notice]]:
        """What was produced since the last call: text and the character it starts at (before it, the text is
        as handed out; a rollback can make it smaller than the last end), visible token events, the output
        ids from index `start` on (likewise), and the controls' notices."""
        text, text_start, events, notices = "".join(self._text), self._handed_chars, self._events, self.notices
        self._text, self._events, self.notices = [], [], []
        self._handed_chars += len(text)
        start, self._handed = self._handed, self.num_output
        return text, text_start, events, start, self.token_ids[self.prompt_length + start :], notices

    # -- what the engine and the token hooks change
    def append(self, event: TokenEvent) -> None:
        """A new output token (sampled or forced): counted, detokenized, stop strings applied."""
        token = event.token
        self.token_ids.append(token)
        self._pieces.append("")
        self._ends.append(self.text_length)
        if self._counts is not None:
            self._counts[token] += 1
        if token in self._end_ids:
            return  # the end token is not text, nor part of the reported log-probs
        self._events.append(event)
        if self._detokenizer is not None and not self._stops.stopped:
            self._release(self._stops.push(self._detokenizer.push(token)))

    def _release(self, piece: str) -> None:
        self._pieces[-1] += piece
        self._ends[-1] += len(piece)
        self._text.append(piece)

    def force(self, tokens: list[int]) -> None:
        """Feed the model `tokens` as if it had written them (their KV entries are written at the next step)."""
        if self.finished:
            raise InvalidRequestError("cannot force tokens into a sequence that has finished")
        for token in tokens:
            if not 0 <= token < self._vocab_size:
                raise InvalidRequestError(f"forced token id {token} is out of range [0, {self._vocab_size})")
            self.append(TokenEvent(token))

    def rollback(self, count: int) -> None:
        """Drop the last `count` output tokens and their KV entries (positions past the new end are simply
        written again); the text already handed out stays handed out."""
        if not 0 <= count <= self.num_output:
            raise InvalidRequestError(f"cannot roll back {count} tokens of a {self.num_output}-token output")
        if count == 0:
            return
        dropped = self.token_ids[-count:]
        del self.token_ids[-count:]
        del self._pieces[-count:], self._ends[-count:]
        self._handed = min(self._handed, self.num_output)
        self.rolled_back += count
        # the last kept token is fed again, so its logits choose the next one
        self.num_computed = min(self.num_computed, len(self.token_ids) - 1)
        if self._counts is not None:
            for token in dropped:
                self._counts[token] -= 1
        self._replay_text()
        visible = sum(token not in self._end_ids for token in dropped)
        del self._events[max(0, len(self._events) - visible) :]  # the dropped ones not handed out yet

    def _replay_text(self) -> None:
        """After a rollback: the detokenizer and stop strings brought back to the kept tokens' state (replayed:
        the same ids give the same text), and the text to hand out cut to the kept text. Text already handed
        out past the new end is taken back: the next output starts before it."""
        if self._tokenizer is None:
            return
        self._detokenizer = IncrementalDetokenizer(self._tokenizer)
        self._stops = StopStringMatcher(self.params.stop)
        for token in self.output_ids:
            if token not in self._end_ids:
                self._stops.push(self._detokenizer.push(token))
        end = self.text_length
        if self._handed_chars >= end:
            self._handed_chars, self._text = end, []
        else:
            self._text = ["".join(self._text)[: end - self._handed_chars]]

    def finish(self, reason: str, error: str | None = None) -> None:
        """End the sequence (first reason wins); its held-back text is released unless a stop string ended it."""
        if self.finished:
            return
        if reason not in FINISH_REASONS:
            raise InvalidRequestError(f"finish reason must be one of {FINISH_REASONS}, got {reason!r}")
        self.finish_reason, self.error = reason, error
        if reason in ("stop", "length", "loop", "budget") and self._detokenizer is not None:
            if not self._stops.stopped:
                self._text.append(self._stops.push(self._detokenizer.flush()))
            self._text.append(self._stops.flush())

    def notify(self, kind: str, message: str, **data: Any) -> None:
        """Record what a control did (a loop cut, a budget reached): reported in the stream and the metadata."""
        self.notices.append(Notice(kind, message, self.num_output, data))

    @property
    def stopped_by_string(self) -> bool:
        return self._stops.stopped

    # -- penalty state, kept incrementally and only for requests that use it
    def output_counts(self) -> torch.Tensor:
        """(V,) int32: how often each id occurs in the output."""
        if self._counts is None:
            self._counts = torch.zeros(self._vocab_size, dtype=torch.int32, device=self._device)
            if self.num_output:
                ids = torch.tensor(self.output_ids, device=self._device)
                self._counts.index_add_(0, ids, torch.ones_like(ids, dtype=torch.int32))
        return self._counts

    def seen_mask(self) -> torch.Tensor:
        """(V,) bool: ids in the prompt or the output."""
        if self._prompt_seen is None:
            self._prompt_seen = torch.zeros(self._vocab_size, dtype=torch.bool, device=self._device)
            self._prompt_seen[torch.tensor(self.token_ids[: self.prompt_length], device=self._device)] = True
        return self._prompt_seen | (self.output_counts() > 0)
