"""The reasoning controls inside the one generation loop: loop recovery, the thinking budget (and minimum),
the language guard and the safety guard on the streamed reply — one object per request, acting through the
engine's seams: a logits processor (the language mask), a token hook that may roll the sequence back, force
a cue or finish it, and notices that every front end reports.

Each control works for tagged reasoning (`<think>…</think>`) and for QwQ-32B-Preview's plain-text reasoning
that closes with a `**Final Answer**` heading: where the reasoning is comes from the same ReasoningSplitter
the text pipeline uses, fed with the sequence's own text. A cue is what the model would write itself: a short
sentence and the closing tag, or a sentence and the answer heading.

Loop recovery keeps the first pass of the repeated block (it is the reasoning the model did) and cuts the
repeats; inside the reasoning it then cues the answer, which runs under its own budget with detection still
on. A loop in the answer, a second loop, or `loop="stop"` cut the repeats and end with finish reason `loop`
(vLLM calls it `repetition`; ours names the weakness the model card names, and the text kept is the reply
without the repeats). An answer that does not end within its budget ends with `loop` after a loop cue and
with `budget` after the thinking budget's.
"""

from __future__ import annotations

from typing import Any

import torch

from qwq.engine.reasoning_split import ReasoningFormat, ReasoningSplitter
from qwq.engine.request import ReasoningParams
from qwq.engine.sequence import Notice, SequenceState
from qwq.errors import ContentFilterError, InvalidRequestError
from qwq.reasoning.guard_protocol import Guard
from qwq.reasoning.language import LanguageMask, detect_scripts, mixing, script_table, scripts_for
from qwq.reasoning.loops import LoopDetector
from qwq.tokenizer.tokenizer import Tokenizer

DEFAULT_ANSWER_TOKENS = 1024  # the answer's budget once a control has cued it, unless the request sets one
_CLOSE = {"think": "</think>", "qwq-preview": "**Final Answer"}
_CUES = {  # (what ends a loop, what ends a spent budget, what replaces an early close)
    "think": (
        "\n\nI keep repeating myself, so I will stop here and give my answer.\n</think>\n\n",
        "\n\nTime to answer.\n</think>\n\n",
        "\n\nWait,",
    ),
    "qwq-preview": (
        "\n\nI keep repeating myself, so I will stop here and give my answer.\n\n**Final Answer**\n\n",
        "\n\nTime to answer.\n\n**Final Answer**\n\n",
        "\n\nWait,",
    ),
}


class ReasoningControls:
    """The controls one request asked for. `processor` and `hook` are what the engine calls."""

    def __init__(
        self,
        params: ReasoningParams,
        reasoning: ReasoningFormat,
        tokenizer: Tokenizer,
        allowed_scripts: frozenset[str] | None = None,
        guard: Guard | None = None,
        messages: list[dict[str, str]] | None = None,
    ) -> None:
        self.params = params
        self.format = reasoning
        self.tokenizer = tokenizer
        self.loop_action = params.loop or ("recover" if reasoning.reasons else "off")
        self.detector = LoopDetector(tokenizer) if self.loop_action != "off" else None
        style = reasoning.style if reasoning.style in _CUES else "think"
        loop_cue, budget_cue, wait_cue = (tokenizer.encode(cue) for cue in _CUES[style])
        self._cues = {"loop": loop_cue, "budget": budget_cue, "wait": wait_cue}
        # the part of the budget cue before the close is reasoning too: it starts this much before the budget
        self._budget_lead = len(tokenizer.encode(_CUES[style][1].split(_CLOSE[style])[0]))
        self._close = _CLOSE[style]
        self.allowed_scripts = allowed_scripts
        self._mask = None
        if params.language.mode == "enforce" and allowed_scripts:
            self._mask = LanguageMask(script_table(tokenizer), allowed_scripts)
        self._guard = guard
        self._guard_checker = guard.reply_checker(messages or []) if guard is not None else None
        self._guard_checked = 0  # output tokens the guard has seen
        self._guard_previous = 0  # where the chunk before the last one began
        self._splitter = ReasoningSplitter(*reasoning.splitter_args)
        self._fed_chars = 0  # characters of the sequence's text the splitter has read
        self._rolled_back = 0  # the sequence's rollbacks the splitter has seen
        self._reasoning_end: int | None = None  # output tokens when the reasoning closed
        self._cued: str | None = None  # "loop" | "budget" once a control has cued the answer
        self._answer_deadline: int | None = None
        self.loops = 0

    # -- what the engine calls
    @property
    def needs_processor(self) -> bool:
        return self._mask is not None

    def processor(self, sequence: SequenceState, logits: torch.Tensor) -> torch.Tensor:
        """The language mask, in the scope asked for."""
        if self._mask is None or not self._in_scope(self.params.language.scope):
            return logits
        return self._mask(logits)

    def hook(self, sequence: SequenceState, token: int) -> None:
        self._read(sequence)
        if self.detector is not None:
            self._sync_detector(sequence)
            hit = self.detector.push(token)
            if hit is not None:
                self._on_loop(sequence, hit.onset, hit.period, hit.kind)
                return
        if self._guard_checker is not None and self._check_guard(sequence, token):
            return
        if self._thinking(sequence):
            return
        if self._answer_deadline is not None and sequence.num_output >= self._answer_deadline:
            reason = "loop" if self._cued == "loop" else "budget"
            sequence.notify(reason, f"no answer within {self._answer_budget} tokens of the cue", cued=self._cued)
            sequence.finish(reason)

    # -- where the reply is
    @property
    def in_reasoning(self) -> bool:
        return self._splitter.in_reasoning

    def _in_scope(self, scope: str) -> bool:
        return scope == "both" or (scope == "reasoning") == self.in_reasoning

    def _read(self, sequence: SequenceState) -> None:
        """Bring the splitter up to the sequence's text (replayed from the start after a rollback)."""
        if sequence.rolled_back != self._rolled_back or sequence.text_length < self._fed_chars:
            self._rolled_back = sequence.rolled_back
            self._splitter = ReasoningSplitter(*self.format.splitter_args)
            self._fed_chars = 0
            if self._reasoning_end is not None and self._reasoning_end > sequence.num_output:
                self._reasoning_end = None
        was_reasoning, start = self._splitter.in_reasoning, self._fed_chars
        self._splitter.push(sequence.text_from(start))
        self._fed_chars = sequence.text_length
        if was_reasoning and not self._splitter.in_reasoning and self._reasoning_end is None:
            # the reasoning ends where the closing tag or heading begins (the splitter sees it complete later)
            recent = max(0, start - len(self._close))
            self._reasoning_end = sequence.token_at(recent + sequence.text_from(recent).find(self._close))

    def _sync_detector(self, sequence: SequenceState) -> None:
        """The detector holds the output up to (not including) the newest token: tokens forced or rolled back
        since the last call are brought in line."""
        assert self.detector is not None
        ids = sequence.output_ids
        kept = len(self.detector)
        if kept > len(ids) - 1:
            self.detector.truncate(len(ids) - 1)
            kept = len(ids) - 1
        for token in ids[kept:-1]:
            self.detector.push(token)

    # -- the controls
    def _on_loop(self, sequence: SequenceState, onset: int, period: int, kind: str) -> None:
        self.loops += 1
        keep = min(sequence.num_output, onset + period)
        cut = sequence.num_output - keep
        sequence.rollback(cut)
        self._read(sequence)
        details = {"onset": onset, "period": period, "pattern": kind, "tokens_cut": cut}
        if self.loop_action == "recover" and self.in_reasoning and self._cued is None:
            self._cue(sequence, "loop")
            sequence.notify(
                "loop",
                f"loop detected ({kind}, period {period}) — {cut} tokens cut — answering",
                action="recovered",
                **details,
            )
            return
        sequence.notify(
            "loop", f"loop detected ({kind}, period {period}) — {cut} tokens cut — stopped", action="stopped", **details
        )
        sequence.finish("loop")

    def _thinking(self, sequence: SequenceState) -> bool:
        """The thinking budget and minimum; True when the sequence was changed."""
        params = self.params
        budget = params.max_thinking_tokens
        if budget is not None and self.in_reasoning and self._cued is None:
            if sequence.num_output >= budget - self._budget_lead:
                self._cue(sequence, "budget")
                sequence.notify("budget", f"thinking budget of {budget} tokens reached — answering", budget=budget)
                return True
            if sequence.output_ids[-1] in sequence.params.end_ids:  # the turn ended inside the reasoning
                sequence.rollback(1)
                self._read(sequence)
                self._cue(sequence, "budget")
                sequence.notify("budget", "the reply ended inside its reasoning — answering", ended_early=True)
                return True
        low = params.min_thinking_tokens
        if low and self._reasoning_end is not None and self._reasoning_end < low and self._cued is None:
            sequence.rollback(sequence.num_output - self._reasoning_end)
            self._read(sequence)
            sequence.force(self._cues["wait"])
            self._reasoning_end = None
            sequence.notify("thinking_extended", f"reasoning closed before {low} tokens — continued", minimum=low)
            return True
        return False

    def _cue(self, sequence: SequenceState, why: str) -> None:
        sequence.force(self._cues[why])
        self._cued = why
        self._answer_deadline = sequence.num_output + self._answer_budget

    @property
    def _answer_budget(self) -> int:
        return self.params.max_answer_tokens or DEFAULT_ANSWER_TOKENS

    def _check_guard(self, sequence: SequenceState, token: int) -> bool:
        """The reply so far (reasoning included) past the guard every `chunk_tokens`; a block cuts the chunk."""
        assert self._guard_checker is not None and self._guard is not None
        params = sequence.params
        last = token in params.end_ids or sequence.num_output >= params.max_tokens or sequence.stopped_by_string
        # a loop's cut took tokens back
        self._guard_checked = min(self._guard_checked, sequence.num_output - 1)
        self._guard_previous = min(self._guard_previous, self._guard_checked)
        if sequence.num_output - self._guard_checked < self._guard.chunk_tokens and not last:
            return False
        start = self._guard_checked
        verdict = self._guard_checker.push(sequence.text_from(self._guard_chars(sequence, start)), final=last)
        self._guard_checked, before = sequence.num_output, self._guard_previous
        self._guard_previous = start
        if verdict is None:
            return False
        # the blocked text may have begun in the chunk before (a phrase across the boundary): both are cut
        sequence.rollback(sequence.num_output - min(before, sequence.num_output))
        sequence.notify(
            "content_filter",
            f"reply blocked by the guard: {verdict.category}",
            category=verdict.category,
            reason=verdict.reason,
        )
        sequence.finish("content_filter")
        return True

    @staticmethod
    def _guard_chars(sequence: SequenceState, token_index: int) -> int:
        return sequence.text_length_at(token_index)

    # -- what the reply's metadata says
    def report(self, notices: list[Notice], reasoning: str, answer: str, num_output: int) -> dict[str, Any]:
        """What the controls did, for every API's response metadata (read once the reply has ended)."""
        params, report = self.params, {}
        loops = [n for n in notices if n.kind == "loop"]
        if self.loop_action != "off":
            report["loops"] = {
                "action": self.loop_action,
                "detected": len(loops),
                "recovered": sum(n.data.get("action") == "recovered" for n in loops),
                "tokens_cut": sum(n.data.get("tokens_cut", 0) for n in loops),
            }
        if params.max_thinking_tokens is not None or params.min_thinking_tokens:
            report["thinking"] = {
                "tokens": self._reasoning_end if self._reasoning_end is not None else num_output,
                "max_thinking_tokens": params.max_thinking_tokens,
                "min_thinking_tokens": params.min_thinking_tokens,
                "budget_reached": any(n.kind == "budget" and "budget" in n.data for n in notices),
                "extended": sum(n.kind == "thinking_extended" for n in notices),
            }
        if params.language.mode != "off" and self.allowed_scripts:
            scope = params.language.scope
            text = {"reasoning": reasoning, "answer": answer}.get(scope, reasoning + answer)
            foreign, letters = mixing(text, self.allowed_scripts)
            report["language"] = {
                "mode": params.language.mode,
                "scope": scope,
                "scripts": sorted(self.allowed_scripts),
                "foreign_letters": foreign,
                "letters": letters,
                "mixing_rate": round(foreign / letters, 6) if letters else 0.0,
            }
        if self._guard is not None:
            blocked = [n for n in notices if n.kind == "content_filter"]
            report["guard"] = {"blocked": blocked[0].data.get("category") if blocked else None}
        return report


def build_controls(
    params: ReasoningParams,
    reasoning: ReasoningFormat,
    tokenizer: Tokenizer,
    conversation: list[dict[str, str]],
    guard: Guard | None,
) -> ReasoningControls | None:
    """The controls a request's params ask for, or None when all are off (then nothing runs per token). The
    guard checks the prompt now: a blocked prompt raises ContentFilterError before anything is queued."""
    if params.guard and guard is None:
        raise InvalidRequestError(
            "the safety guard was asked for, but none is configured (qwq serve --guard FILE|MODEL)", field="guard"
        )
    guard = guard if params.guard is not False else None
    loop = params.loop or ("recover" if reasoning.reasons else "off")
    thinking = params.max_thinking_tokens is not None or bool(params.min_thinking_tokens)
    language = params.language
    if loop == "off" and not thinking and language.mode == "off" and guard is None:
        return None
    allowed = None
    if language.mode != "off":
        if language.language is not None:
            allowed = scripts_for(language.language)
        else:
            users = [m.get("content") or "" for m in conversation if m.get("role") == "user"]
            allowed = detect_scripts(users[-1] if users else "") or None
    if guard is not None and (verdict := guard.check_prompt(conversation)) is not None:
        raise ContentFilterError(f"the prompt was blocked by the safety guard ({verdict.category}): {verdict.reason}")
    return ReasoningControls(params, reasoning, tokenizer, allowed, guard, conversation)
