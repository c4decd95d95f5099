"""Printing a streamed reply in a terminal: the reasoning apart from the answer, and ollama's statistics.

One-shot use prints the answer alone on stdout and the reasoning on stderr, so `qwq run ... | cmd` gets
only the answer. The interactive chat prints both on stdout, the reasoning dimmed between labels.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TextIO

from qwq.engine.output import Completion, GenerationStats, Piece

_DIM, _RESET = "\x1b[2m", "\x1b[0m"


@dataclass
class Reply:
    """What the model said, split, and how the generation ended."""

    reasoning: str
    answer: str
    finish_reason: str | None
    error: str | None
    stats: GenerationStats

    @property
    def text(self) -> str:
        return self.reasoning + self.answer


class ReplyPrinter:
    """Streams a reply to `answer_out`, its reasoning to `reasoning_out` (None hides it)."""

    def __init__(
        self, answer_out: TextIO, reasoning_out: TextIO | None, labels: bool, notice_out: TextIO | None = None
    ) -> None:
        self._answer_out = answer_out
        self._reasoning_out = reasoning_out
        self._notice_out = notice_out or sys.stderr  # what the reasoning controls did, as it happens
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

    def _push(self, piece: Piece) -> None:
        for notice in piece.notices:
            self._write_notice(notice.message)
        self._write_reasoning(piece.reasoning)
        self._write_answer(piece.answer)

    def _write_notice(self, message: str) -> None:
        """A control's notice on a line of its own (text already printed cannot be taken back: it says what
        was cut, and the reply kept in the conversation is the one without it)."""
        out = self._notice_out
        printed = "".join(self._answer) or "".join(self._reasoning)
        shared = out in (self._answer_out, self._reasoning_out)
        lead = "\n" if shared and printed and not printed.endswith("\n") else ""
        dim = self._dim and out is self._reasoning_out
        out.write(f"{lead}{_RESET if dim else ''}[{message}]{_DIM if dim and self._thinking_open else ''}\n")
        out.flush()

    def stream(self, completion: Completion) -> Reply:
        """Print every piece as it arrives; a KeyboardInterrupt stops it cleanly (and cancels the generation)
        and propagates."""
        try:
            for piece in completion.pieces():
                self._push(piece)
        finally:
            completion.close()
            self._close_reasoning()
            if self._answer and not self._answer[-1].endswith("\n"):
                self._answer_out.write("\n")
            self._answer_out.flush()
        return Reply(
            completion.reasoning, completion.answer, completion.finish_reason, completion.error, completion.stats
        )


def finish_note(reply: Reply) -> str | None:
    """What the terminal says about how a reply ended, when it did not simply end with its answer."""
    if reply.finish_reason == "error":
        return f"error: {reply.error}"
    if reply.finish_reason == "length":
        return "(cut off at the token limit: finish reason length)"
    if reply.finish_reason == "loop":
        return "(stopped: the reply kept repeating itself, finish reason loop)"
    if reply.finish_reason == "budget":
        return "(stopped: no answer within the answer budget, finish reason budget)"
    if reply.finish_reason == "content_filter":
        return "(stopped: the safety guard blocked the reply, finish reason content_filter)"
    if reply.reasoning and not reply.answer:
        return f"(no final answer: the reply ended while reasoning, finish reason {reply.finish_reason})"
    return None


def print_stats(
    stats: GenerationStats,
    total_seconds: float,
    load_seconds: float,
    out: TextIO = sys.stderr,
    finish: str | None = None,
) -> None:
    """ollama's `--verbose` block, and how the reply ended."""
    rows = [
        ("total duration", f"{total_seconds:.3f}s"),
        ("load duration", f"{load_seconds:.3f}s"),
        ("prompt eval count", f"{stats.prompt_tokens} token(s)"),
        ("prompt eval duration", f"{stats.prompt_seconds * 1000:.1f}ms"),
        ("prompt eval rate", f"{stats.prompt_rate:.2f} tokens/s"),
        ("eval count", f"{stats.generated_tokens} token(s)"),
        ("eval duration", f"{stats.generate_seconds * 1000:.1f}ms"),
        ("eval rate", f"{stats.generate_rate:.2f} tokens/s"),
        *([("finish reason", finish)] if finish else []),
    ]
    for label, value in rows:
        out.write(f"{label + ':':<22}{value}\n")
    out.flush()
