"""The one text pipeline from engine outputs to what a front end shows: the reply split into reasoning and
answer (also while streaming), the tokens' log-probs, the finish reason, counts and timings.

The engine has already detokenized (UTF-8 safe) and applied stop strings; a `Completion` adds the reasoning
split and the timings. The CLI, the Python API and both HTTP dialects read the same `Piece`s.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from qwq.engine.engine import SequenceOutput
from qwq.engine.reasoning_split import Delta, ReasoningSplitter
from qwq.engine.request import Request
from qwq.engine.sequence import Notice, TokenEvent


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
    """New text of one reply; the last piece carries the finish reason (and an error's message), counts and
    the controls' report. `retracted_*`: characters of the reasoning and answer streamed before that a control
    took back (a loop's repeats) — remove them before adding this piece's text. `notices`: what the controls
    did at this point."""

    reasoning: str = ""
    answer: str = ""
    events: list[TokenEvent] = field(default_factory=list)
    finish_reason: str | None = None
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    stats: GenerationStats | None = None
    retracted_reasoning: int = 0
    retracted_answer: int = 0
    notices: list[Notice] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return self.reasoning + self.answer


class Completion:
    """A reply as it is generated. Iterate it for text pieces (reasoning and answer together), or call
    `pieces()` for them split; `finish_reason`, `error`, `token_count`, `stats`, `reasoning` and `answer` (the
    reply as it stands, after any cut), `notices` and `report` are set as it runs. Closing it early (or leaving
    the loop) cancels the generation."""

    def __init__(
        self,
        outputs: Iterator[SequenceOutput],
        request: Request,
        reasoning_style: tuple[str, bool] = ("none", False),
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self._outputs = outputs
        self._style = reasoning_style
        self._splitter = ReasoningSplitter(*reasoning_style)
        self._on_close = on_close
        self._controls = request.controls
        self.prompt_tokens = len(request.prompt_ids)
        self.token_count = 0
        self.token_ids: list[int] = []  # the output so far, the end token included
        self.rolled_back = 0
        self.finish_reason: str | None = None
        self.error: str | None = None
        self._reasoning: list[str] = []  # pieces, joined when read: no per-token copy of the whole reply
        self._answer: list[str] = []
        self.notices: list[Notice] = []
        self.report: dict[str, Any] = {}
        self._parts: list[str] = []  # the engine's text so far, before the split
        self._length = 0
        self._started = time.perf_counter()
        self._first_token = self._last_token = self._started

    @property
    def reasoning(self) -> str:
        return "".join(self._reasoning)

    @property
    def answer(self) -> str:
        return "".join(self._answer)

    @property
    def text(self) -> str:
        return self.reasoning + self.answer

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
                piece = Piece(events=list(output.events), notices=list(output.notices))
                self.notices += output.notices
                if output.text_start < self._length:
                    self._retract(output.text_start, piece)
                self._add(self._splitter.push(output.text), output.text, piece)
                if output.finish_reason is not None:
                    self._add(self._splitter.flush(), "", piece)
                    self.finish_reason, self.error = output.finish_reason, output.error
                    piece.finish_reason, piece.error = output.finish_reason, output.error
                    piece.prompt_tokens, piece.completion_tokens = self.prompt_tokens, self.token_count
                    piece.stats = self.stats
                    if self._controls is not None:
                        self.report = self._controls.report(self.notices, self.reasoning, self.answer, self.token_count)
                    piece.report = self.report
                    yield piece
                    return
                if piece.text or piece.events or piece.notices or piece.retracted_reasoning or piece.retracted_answer:
                    yield piece
        finally:
            self.close()

    def _add(self, delta: Delta, text: str, piece: Piece) -> None:
        self._parts.append(text)
        self._length += len(text)
        self._reasoning.append(delta.reasoning)
        self._answer.append(delta.answer)
        piece.reasoning += delta.reasoning
        piece.answer += delta.answer

    def _retract(self, keep: int, piece: Piece) -> None:
        """Text taken back by a rollback: the split made again from the text kept."""
        text = "".join(self._parts)[:keep]
        self._parts, self._length = [text], len(text)
        self._splitter = ReasoningSplitter(*self._style)
        kept = self._splitter.push(text)
        reasoning, answer = self.reasoning, self.answer
        same_reasoning = len(os.path.commonprefix([reasoning, kept.reasoning]))
        same_answer = len(os.path.commonprefix([answer, kept.answer]))
        piece.retracted_reasoning = len(reasoning) - same_reasoning
        piece.retracted_answer = len(answer) - same_answer
        piece.reasoning, piece.answer = kept.reasoning[same_reasoning:], kept.answer[same_answer:]
        self._reasoning, self._answer = [kept.reasoning], [kept.answer]

    def close(self) -> None:
        close = getattr(self._outputs, "close", None)
        if close is not None:
            close()
        if self._on_close is not None:
            self._on_close()
            self._on_close = None
