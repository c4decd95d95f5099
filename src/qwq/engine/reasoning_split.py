"""Splitting a reasoning model's streamed reply into its reasoning and its final answer, as vLLM's reasoning
parsers do, piece by piece (a tag split across pieces is held back until it is complete or ruled out).

Styles:
- "think": `<think>reasoning</think>answer` (QwQ-32B, DeepSeek-R1 distills). The opening tag may be in the
  prompt (the chat template ends with `<think>`), in which case the reply starts inside the reasoning.
  Replies that do not open with `<think>` are all answer, so a plain chat model passes through untouched.
- "qwq-preview": QwQ-32B-Preview reasons in plain text and then writes a `**Final Answer**` heading; the
  reasoning is everything before the first such heading and the answer everything after it.
- "none": no splitting; everything is answer.
A reply that ends while still reasoning (no closing tag or heading) has an empty answer: the model gave no
final answer, and we say so rather than relabel its reasoning.
"""

from __future__ import annotations

from dataclasses import dataclass

from qwq.tokenizer.tokenizer import Tokenizer

STYLES = ("think", "qwq-preview", "none")
_THINK_OPEN, _THINK_CLOSE = "<think>", "</think>"
_FINAL_ANSWER = "**Final Answer"
_QWQ_PREVIEW_HINT = "You should think step-by-step"


@dataclass(frozen=True)
class Delta:
    """The new text of one push: the part that belongs to the reasoning and the part that is the answer."""

    reasoning: str = ""
    answer: str = ""


class ReasoningSplitter:
    def __init__(self, style: str = "think", starts_in_reasoning: bool = False) -> None:
        if style not in STYLES:
            raise ValueError(f"reasoning style must be one of {STYLES}, got {style!r}")
        self.style = style
        self._state = "reasoning" if style == "qwq-preview" or starts_in_reasoning else "start"
        if style == "none":
            self._state = "answer"
        self._close = _FINAL_ANSWER if style == "qwq-preview" else _THINK_CLOSE
        # what is trimmed off the start of an answer: the heading's rest for QwQ-Preview, the whitespace after a
        # closing tag; nothing when nothing is split off (the text passes through as the model wrote it)
        self._strip = {"qwq-preview": " \t\r\n*:", "think": " \t\r\n", "none": ""}[style]
        self._held = ""
        self._answer_started = False
        self._reopen_bold: bool | None = None

    @property
    def in_reasoning(self) -> bool:
        return self._state == "reasoning"

    def push(self, text: str) -> Delta:
        self._held += text
        reasoning, answer = [], []
        while self._held:
            if self._state == "start":
                stripped = self._held.lstrip()
                if stripped and _THINK_OPEN.startswith(stripped):
                    break  # could still become "<think>"
                if stripped.startswith(_THINK_OPEN):
                    self._held = stripped[len(_THINK_OPEN) :].lstrip("\n")
                    self._state = "reasoning"
                elif stripped:
                    self._state = "answer"
                else:
                    break
            elif self._state == "reasoning":
                index = self._held.find(self._close)
                if index >= 0:
                    reasoning.append(self._held[:index])
                    self._held = self._held[index + len(self._close) :]
                    self._state = "answer"
                    continue
                keep = _partial_suffix(self._held, self._close)
                reasoning.append(self._held[: len(self._held) - keep])
                self._held = self._held[len(self._held) - keep :]
                break
            else:
                if not self._answer_started:
                    if self._reopen_bold is None and self.style == "qwq-preview":
                        # "**Final Answer**: x" closes the bold; "**Final Answer: x**" keeps x inside it
                        after_colon = self._held.lstrip(": \t")
                        if len(after_colon) < 2 and "**".startswith(after_colon):
                            break  # cannot tell yet
                        self._reopen_bold = not after_colon.startswith("**")
                    self._held = self._held.lstrip(self._strip)
                    if not self._held:
                        break
                    if self._reopen_bold:
                        self._held = "**" + self._held
                    self._answer_started = True
                answer.append(self._held)
                self._held = ""
        return Delta("".join(reasoning), "".join(answer))

    def flush(self) -> Delta:
        """The text still held back, once the reply has ended."""
        held, self._held = self._held, ""
        if self._state == "reasoning":
            return Delta(reasoning=held)
        if self._state == "answer" and not self._answer_started:
            return Delta(answer=held.lstrip(self._strip))
        return Delta(answer=held.strip() if self._state == "start" else held)


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of `text` that is a proper beginning of `tag`."""
    for length in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:length]):
            return length
    return 0


def split_reasoning(text: str, style: str = "think", starts_in_reasoning: bool = False) -> Delta:
    """A whole reply split at once (the same result as streaming it through a ReasoningSplitter)."""
    splitter = ReasoningSplitter(style, starts_in_reasoning)
    first, rest = splitter.push(text), splitter.flush()
    return Delta(first.reasoning + rest.reasoning, first.answer + rest.answer)


@dataclass(frozen=True)
class ReasoningFormat:
    """How a model writes its reasoning: the splitter's style, whether replies start inside the reasoning,
    and whether the model reasons at all (a plain chat model has nothing to budget or cue)."""

    style: str
    starts_in_reasoning: bool
    reasons: bool

    @property
    def splitter_args(self) -> tuple[str, bool]:
        return self.style, self.starts_in_reasoning

    @classmethod
    def named(cls, style: str) -> ReasoningFormat:
        """A format forced by name (`--reasoning-format`): QwQ-Preview's replies start in the reasoning."""
        if style not in STYLES:
            raise ValueError(f"reasoning style must be one of {STYLES}, got {style!r}")
        return cls(style, style == "qwq-preview", style != "none")


def detect_format(tokenizer: Tokenizer) -> ReasoningFormat:
    """A model's reasoning format, judged from its vocabulary and chat template: a `</think>` token means
    tagged reasoning (starting inside it when the template opens `<think>`), QwQ-Preview's system prompt
    means plain-text reasoning; otherwise a plain model whose replies pass through (a `<think>` it writes
    as text is still split off)."""
    if tokenizer.token_id(_THINK_CLOSE) is not None:
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], add_generation_prompt=True)
        return ReasoningFormat("think", prompt.rstrip().endswith(_THINK_OPEN), True)
    if _QWQ_PREVIEW_HINT in (tokenizer.chat_template or ""):
        return ReasoningFormat("qwq-preview", True, True)
    return ReasoningFormat("think", False, False)
