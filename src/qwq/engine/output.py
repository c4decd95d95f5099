"""The one text pipeline from engine outputs to what a front end shows: the reply split into reasoning and
answer (also while streaming), the tokens' log-probs, the finish reason, counts and timings.

The engine has already detokenized (UTF-8 safe) and applied stop strings; a `Completion` adds the reasoning
split and the timings. The CLI, the Python API and both HTTP dialects read the same `Piece`s.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from qwq.engine.engine import SequenceOutput
from qwq.engine.sequence import TokenEvent
from qwq.reasoning.parser import ReasoningSplitter


@dataclass(frozen=True)
class GenerationStats:
    """Counts and durations in ollama's terms: the prompt's evaluation (prefill, up to the first new token)
    and the evaluation of the new tokens; the rate counts the tokens decoded after the first."""

    prompt_tokens: int
    prompt_seconds: float
    generated_tokens: int
    generate_seconds: float

    @property
    def prompt_rate(self) -> float:
        return self.prompt_tokens / self.prompt_seconds if self.prompt_seconds > 0 else 0.0

    @property
    def generate_rate(self) -> float:
        return (self.generated_tokens - 1) / self.generate_seconds if self.generate_seconds > 0 else 0.0


@dataclass
class Piece:
    """New text of one reply; the last piece carries the finish reason (and an error's message) and counts."""

    reasoning: str = ""
    answer: str = ""
    events: list[TokenEvent] = field(default_factory=list)
    finish_reason: str | None = None
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    stats: GenerationStats | None = None

    @property
    def text(self) -> str:
        return self.reasoning + self.answer


class Completion:
    """A reply as it is generated. Iterate it for text pieces (reasoning and answer together), or call
    `pieces()` for them split; `finish_reason`, `error`, `token_count` and `stats` are set as it runs.
    Closing it early (or leaving the loop) cancels the generation."""

    def __init__(
        self,
        outputs: Iterator[SequenceOutput],
        prompt_tokens: int,
        splitter: ReasoningSplitter | None = None,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self._outputs = outputs
        self._splitter = splitter or ReasoningSplitter("none")
        self._on_close = on_close
        self.prompt_tokens = prompt_tokens
        self.token_count = 0
        self.token_ids: list[int] = []  # the output so far, the end token included
        self.rolled_back = 0
        self.finish_reason: str | None = None
        self.error: str | None = None
        self._started = time.perf_counter()
        self._first_token = self._last_token = self._started

    @property
    def stats(self) -> GenerationStats:
        """The timings so far; the first new token's time counts toward the prompt, as ollama counts it."""
        return GenerationStats(
            prompt_tokens=self.prompt_tokens,
            prompt_seconds=self._first_token - self._started,
            generated_tokens=self.token_count,
            generate_seconds=self._last_token - self._first_token,
        )

    def __iter__(self) -> Iterator[str]:
        for piece in self.pieces():
            if piece.text:
                yield piece.text

    def pieces(self) -> Iterator[Piece]:
        try:
            for output in self._outputs:
                now = time.perf_counter()
                if output.num_output and not self.token_count:
                    self._first_token = now
                if output.num_output:
                    self._last_token = now
                self.token_count, self.rolled_back = output.num_output, output.rolled_back
                self.token_ids[output.start :] = output.new_ids
                delta = self._splitter.push(output.text)
                piece = Piece(delta.reasoning, delta.answer, list(output.events))
                if output.finish_reason is not None:
                    tail = self._splitter.flush()
                    piece.reasoning += tail.reasoning
                    piece.answer += tail.answer
                    self.finish_reason, self.error = output.finish_reason, output.error
                    piece.finish_reason, piece.error = output.finish_reason, output.error
                    piece.prompt_tokens, piece.completion_tokens = self.prompt_tokens, self.token_count
                    piece.stats = self.stats
                    yield piece
                    return
                if piece.text or piece.events:
                    yield piece
        finally:
            self.close()

    def close(self) -> None:
        close = getattr(self._outputs, "close", None)
        if close is not None:
            close()
        if self._on_close is not None:
            self._on_close()
            self._on_close = None
