"""The reasoning controls' request fields, the same on the OpenAI and Ollama routes, and how a reply reports
what they did.

Request: `repetition_detection` (vLLM's object, with `action`: recover | stop | off), `thinking_token_budget`
(vLLM's name) or `reasoning_effort` (OpenAI's levels mapped to budgets), `min_thinking_tokens`,
`max_answer_tokens`, `language_guard` ({"mode", "language", "scope"}), `guard` (run the server's safety guard;
on by default when it has one). Ollama's `think` also takes the levels "low" | "medium" | "high".
Reply: a `qwq` object next to the finish reason with the controls' report, and in streams the notices and
the characters a control took back (`retracted`), so a client can redraw.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field

from qwq.engine.output import Piece
from qwq.engine.request import LanguageParams, ReasoningParams
from qwq.server.protocol import RequestBody

# reasoning effort -> thinking budget in tokens (None: no budget); QwQ's replies to hard problems run to ~8k
EFFORT_BUDGETS: dict[str, int | None] = {"low": 1024, "medium": 4096, "high": None}


# the reasoning controls' fields in the one request type, under the names of these request fields
CONTROL_NAMES = {
    "max_thinking_tokens": "thinking_token_budget",
    "loop": "repetition_detection.action",
    "language": "language_guard.language",
}


class RepetitionDetection(RequestBody):
    action: Literal["recover", "stop", "off"] = "recover"


class LanguageGuardField(RequestBody):
    model_config = ConfigDict(strict=True, extra="forbid")
    mode: Literal["off", "warn", "enforce"] = "warn"
    language: str | None = None
    scope: Literal["reasoning", "answer", "both"] = "both"


class ControlFields(RequestBody):
    """Mixed into both dialects' request bodies."""

    repetition_detection: RepetitionDetection | None = None
    thinking_token_budget: int | None = Field(default=None, ge=1)
    reasoning_effort: Literal["low", "medium", "high"] | None = None
    min_thinking_tokens: int | None = Field(default=None, ge=0)
    max_answer_tokens: int | None = Field(default=None, ge=1)
    language_guard: LanguageGuardField | None = None
    guard: bool | None = None

    def reasoning_params(self, split: bool, effort: str | None = None) -> ReasoningParams:
        """The one request type's reasoning controls from these fields (an explicit budget beats an effort)."""
        effort = effort or self.reasoning_effort
        budget = self.thinking_token_budget
        if budget is None and effort is not None:
            budget = EFFORT_BUDGETS[effort]
        language = self.language_guard
        return ReasoningParams(
            split=split,
            loop=self.repetition_detection.action if self.repetition_detection else None,
            max_thinking_tokens=budget,
            min_thinking_tokens=self.min_thinking_tokens,
            max_answer_tokens=self.max_answer_tokens,
            language=LanguageParams(language.mode, language.language, language.scope) if language else LanguageParams(),
            guard=self.guard,
        )


def progress_fields(piece: Piece, final: bool = False) -> dict[str, Any]:
    """What a streamed piece says about the controls: their notices, any text they took back, and on the
    final piece their report."""
    fields: dict[str, Any] = {}
    if piece.notices:
        fields["notices"] = [{"kind": n.kind, "message": n.message, "at_token": n.at, **n.data} for n in piece.notices]
    if piece.retracted_reasoning or piece.retracted_answer:
        fields["retracted"] = {"reasoning": piece.retracted_reasoning, "content": piece.retracted_answer}
    if final and piece.report:
        fields["controls"] = piece.report
    return {"qwq": fields} if fields else {}


def report_fields(report: dict[str, Any]) -> dict[str, Any]:
    """The final report of the controls, next to a reply's finish reason (nothing when none ran)."""
    return {"qwq": {"controls": report}} if report else {}
