"""Printing a streamed reply in a terminal: the reasoning apart from the answer, and ollama's statistics.

One-shot use prints the answer alone on stdout and the reasoning on stderr, so `qwq run ... | cmd` gets
only the answer. The interactive chat prints both on stdout, the reasoning dimmed between labels.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TextIO

from qwq.engine.generate import GenerationStats, TextStream
from qwq.reasoning.parser import ReasoningSplitter

_DIM, _RESET = "\x1b[2m", "\x1b[0m"


@dataclass
class Reply:
    """What the model said, split, and how the generation ended."""

    reasoning: str
    answer: str
    finish_reason: str | None
    stats: GenerationStats

    @property
    def text(self) -> str:
        return self.reasoning + self.answer


class ReplyPrinter:
    """Streams a reply to `answer_out`, its reasoning to `reasoning_out` (None hides it)."""

    def __init__(
        self, answer_out: TextIO, reasoning_out: TextIO | None, splitter: ReasoningSplitter, labels: bool
    ) -> None:
        self._answer_out = answer_out
        self._reasoning_out = reasoning_out
        self._splitter = splitter
        self._labels = labels  # "Thinking..." / "...done thinking." around the reasoning, as ollama prints
        self._dim = reasoning_out is not None and reasoning_out.isatty()
        self._reasoning: list[str] = []
        self._answer: list[str] = []
        self._thinking_open = False

    def _write_reasoning(self, text: str) -> None:
        self._reasoning.append(text)
        if self._reasoning_out is None or not text:
            return
        if not self._thinking_open:
            self._thinking_open = True
            if self._labels:
                self._reasoning_out.write("Thinking...\n")
            if self._dim:
                self._reasoning_out.write(_DIM)
        self._reasoning_out.write(text)
        self._reasoning_out.flush()

    def _close_reasoning(self) -> None:
        if not self._thinking_open or self._reasoning_out is None:
            return
        self._thinking_open = False
        if self._dim:
            self._reasoning_out.write(_RESET)
        if not "".join(self._reasoning).endswith("\n"):
            self._reasoning_out.write("\n")
        if self._labels:
            self._reasoning_out.write("...done thinking.\n\n")
        self._reasoning_out.flush()

    def _write_answer(self, text: str) -> None:
        if not text:
            return
        self._close_reasoning()
        self._answer.append(text)
        self._answer_out.write(text)
        self._answer_out.flush()

    def _push(self, piece: str, final: bool = False) -> None:
        delta = self._splitter.flush() if final else self._splitter.push(piece)
        self._write_reasoning(delta.reasoning)
        self._write_answer(delta.answer)

    def stream(self, text: TextStream) -> Reply:
        """Print every piece as it arrives; a KeyboardInterrupt stops it cleanly and propagates."""
        try:
            for piece in text:
                self._push(piece)
            self._push("", final=True)
        finally:
            self._close_reasoning()
            if self._answer and not self._answer[-1].endswith("\n"):
                self._answer_out.write("\n")
            self._answer_out.flush()
        return Reply("".join(self._reasoning), "".join(self._answer), text.finish_reason, text.stats)


def print_stats(stats: GenerationStats, total_seconds: float, load_seconds: float, out: TextIO = sys.stderr) -> None:
    """ollama's `--verbose` block."""
    rows = [
        ("total duration", f"{total_seconds:.3f}s"),
        ("load duration", f"{load_seconds:.3f}s"),
        ("prompt eval count", f"{stats.prompt_tokens} token(s)"),
        ("prompt eval duration", f"{stats.prompt_seconds * 1000:.1f}ms"),
        ("prompt eval rate", f"{stats.prompt_rate:.2f} tokens/s"),
        ("eval count", f"{stats.generated_tokens} token(s)"),
        ("eval duration", f"{stats.generate_seconds * 1000:.1f}ms"),
        ("eval rate", f"{stats.generate_rate:.2f} tokens/s"),
    ]
    for label, value in rows:
        out.write(f"{label + ':':<22}{value}\n")
    out.flush()
