"""The model's tool calls parsed out of its answer, as vLLM's hermes parser reads Qwen2.5's format:
`<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>` blocks become calls, the rest stays content.

Streaming: a `<tool_call>` tag split across pieces is held back until it is complete or ruled out, a block
is held until it closes, and whitespace next to a block is dropped, so the pieces give what the whole text
gives. A block whose JSON is not a call (malformed, no name) stays content, as the model wrote it.
Small Qwen2.5 models often answer with the call's JSON alone, without the tags: as ollama does, an answer that
is one such object naming an offered tool is a call too (an answer opening with `{` is held to its end).
"""

from __future__ import annotations

import dataclasses
import json
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from qwq.engine.output import Piece

OPEN, CLOSE = "<tool_call>", "</tool_call>"


@dataclass(frozen=True)
class ToolCall:
    """One call: an id for the tool's result to name, the function's name and its arguments as JSON text."""

    name: str
    arguments: str
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")

    def arguments_dict(self) -> dict:
        return json.loads(self.arguments)


@dataclass(frozen=True)
class ToolDelta:
    """The new text of one push: content (text outside the calls) and the calls completed by it."""

    content: str = ""
    calls: tuple[ToolCall, ...] = ()


def read_call(body: str) -> ToolCall | None:
    """The call a block's text holds: a JSON object with a string `name` and object `arguments` (absent: {})."""
    try:
        value = json.loads(body)
    except json.JSONDecodeError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("name"), str) or not value["name"]:
        return None
    arguments = value.get("arguments", {})
    if not isinstance(arguments, dict):
        return None
    return ToolCall(value["name"], json.dumps(arguments, ensure_ascii=False))


class ToolCallParser:
    def __init__(self, names: Sequence[str] = ()) -> None:
        self._names = frozenset(names)  # the tools offered: a bare JSON answer naming one is a call
        self._start = bool(names)  # still before the answer's first character (a bare call is possible)
        self._bare = False  # the answer opened with "{": held to its end
        self._held = ""  # text not yet handed out: a possible tag's start, trailing whitespace, or an open block
        self._gap = ""  # the whitespace before the open block (content again if the block is not a call)
        self._in_call = False
        self._after_call = False  # whitespace right after a call is dropped

    def push(self, text: str) -> ToolDelta:
        self._held += text
        content: list[str] = []
        calls: list[ToolCall] = []
        if self._start and self._held.strip():
            self._start, self._bare = False, self._held.lstrip().startswith("{")
        if self._start or self._bare:
            return ToolDelta()
        while True:
            if self._in_call:
                index = self._held.find(CLOSE)
                if index < 0:
                    break
                body, self._held = self._held[:index], self._held[index + len(CLOSE) :]
                self._end_block(body, CLOSE, content, calls)
                continue
            if self._after_call:
                self._held = self._held.lstrip()
                if not self._held:
                    break
                self._after_call = False
            index = self._held.find(OPEN)
            if index >= 0:
                before = self._held[:index]
                kept = before.rstrip()
                content.append(kept)
                self._gap, self._held, self._in_call = before[len(kept) :], self._held[index + len(OPEN) :], True
                continue
            cut = len(self._held) - _partial_suffix(self._held, OPEN)
            cut = len(self._held[:cut].rstrip())  # trailing whitespace might come right before a call
            content.append(self._held[:cut])
            self._held = self._held[cut:]
            break
        return ToolDelta("".join(content), tuple(calls))

    def flush(self) -> ToolDelta:
        """The text still held back, once the answer has ended: an unclosed block is a call if its JSON is one."""
        content: list[str] = []
        calls: list[ToolCall] = []
        if self._bare or self._start:
            call = read_call(self._held.strip())
            if call is not None and call.name in self._names:
                self._held = ""
                return ToolDelta(calls=(call,))
            self._bare = self._start = False
            pushed = self.push("")
            content.append(pushed.content)
            calls += pushed.calls
        held, self._held = self._held, ""
        if self._in_call:
            self._end_block(held, "", content, calls)
        elif not self._after_call:
            content.append(held)
        return ToolDelta("".join(content), tuple(calls))

    def _end_block(self, body: str, close: str, content: list[str], calls: list[ToolCall]) -> None:
        call = read_call(body)
        if call is None:
            content.append(self._gap + OPEN + body + close)
        else:
            calls.append(call)
            self._after_call = True
        self._gap, self._in_call = "", False


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of `text` that is a proper beginning of `tag`."""
    for length in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:length]):
            return length
    return 0


def parse_tool_calls(text: str, names: Sequence[str] = ()) -> ToolDelta:
    """A whole answer parsed at once (the same result as streaming it through a ToolCallParser)."""
    parser = ToolCallParser(names)
    first, rest = parser.push(text), parser.flush()
    return ToolDelta(first.content + rest.content, first.calls + rest.calls)


class ToolCallStream:
    """A streamed reply's pieces with their answer parsed into content and calls. A piece that takes back
    answer text (a control's rollback) re-parses the kept answer: its `retracted_answer` then counts content
    characters. Calls already handed out stay out."""

    def __init__(self, names: Sequence[str] = ()) -> None:
        self._names = tuple(names)
        self._parser = ToolCallParser(self._names)
        self._answer = ""
        self._content = ""
        self.calls: list[ToolCall] = []

    def push(self, piece: Piece) -> tuple[Piece, tuple[ToolCall, ...]]:
        """`piece` with its answer replaced by the new content (and its final piece's held text), and the new calls."""
        retracted = 0
        if piece.retracted_answer:
            self._answer = self._answer[: len(self._answer) - piece.retracted_answer]
            self._parser = ToolCallParser(self._names)
            kept = self._parser.push(self._answer)
            same = len(os.path.commonprefix([self._content, kept.content]))
            retracted, self._content = len(self._content) - same, self._content[:same]
            delta = ToolDelta(kept.content[same:], kept.calls[len(self.calls) :])
        else:
            delta = ToolDelta()
        self._answer += piece.answer
        pushed = self._parser.push(piece.answer)
        delta = ToolDelta(delta.content + pushed.content, delta.calls + pushed.calls)
        if piece.finish_reason is not None:
            rest = self._parser.flush()
            delta = ToolDelta(delta.content + rest.content, delta.calls + rest.calls)
        self._content += delta.content
        self.calls += delta.calls
        return dataclasses.replace(piece, answer=delta.content, retracted_answer=retracted), delta.calls

    @property
    def content(self) -> str:
        return self._content
