"""What every safety guard offers the engine: a `Verdict` when it blocks, the `Guard` protocol, and the per-reply
`ReplyChecker` a stream pushes its new text into (so a guard that can check incrementally keeps streaming linear).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class Verdict:
    """A block: the category at fault and a short reason a person can read (shown in the refusal)."""

    category: str
    reason: str


class ReplyChecker(Protocol):
    """One streamed reply's checker: `push` the text generated since the last push (reasoning included);
    `final=True` on the last push, so text held back at a chunk boundary is checked too."""

    def push(self, text: str, final: bool = False) -> Verdict | None: ...


class Guard(Protocol):
    """A safety check on the prompt before generation and on the reply while it streams; None means allowed.

    `check_reply` gets the whole reply so far; `reply_checker` gives the same judgement pushed chunk by chunk,
    every `chunk_tokens` new tokens, which is the streaming path (a policy guard then scans only new text).
    """

    chunk_tokens: int

    def check_prompt(self, messages: Messages) -> Verdict | None: ...

    def check_reply(self, messages: Messages, reply: str) -> Verdict | None: ...

    def reply_checker(self, messages: Messages) -> ReplyChecker: ...


class WholeReplyChecker:
    """A ReplyChecker for guards that must see the whole reply each time (a guard model reads it in context):
    it keeps the text pushed so far and asks `check_reply` about all of it."""

    def __init__(self, guard: Guard, messages: Messages) -> None:
        self._guard = guard
        self._messages = messages
        self._parts: list[str] = []

    def push(self, text: str, final: bool = False) -> Verdict | None:
        self._parts.append(text)
        return self._guard.check_reply(self._messages, "".join(self._parts))
