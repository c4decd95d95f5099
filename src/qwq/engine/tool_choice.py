"""The tools a chat request offers and what its `tool_choice` asks of generation.

"auto": the model chooses. "none": the tools are still rendered (the model knows them, as OpenAI's API keeps
them) but the `<tool_call>` token is masked, so no call starts. "required" or a named function: the answer must
be one call, `<tool_call>\n{"name": NAME, "arguments": ARGS}\n</tool_call>`, to one of the allowed tools with
ARGS valid under that tool's parameters schema: an llguidance grammar that grammar.py's constraint enforces
(as vLLM does with its guided decoding).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from llguidance import LLMatcher

from qwq.engine.request import LogitsProcessor
from qwq.engine.sequence import SequenceState
from qwq.engine.structured import JSON_OPTIONS
from qwq.engine.tool_calls import CLOSE, OPEN
from qwq.errors import InvalidRequestError
from qwq.tokenizer.tokenizer import Tokenizer

MODES = ("auto", "none", "required")
Tool = dict[str, Any]


def check_tools(tools: Sequence[Tool] | None) -> list[Tool]:
    """The tools as the chat template takes them ({"type": "function", "function": {...}}), checked: each has
    a name, and its parameters (when given) are a JSON schema of an object."""
    checked = []
    for index, tool in enumerate(tools or ()):
        where = f"tools[{index}]"
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or tool.get("type", "function") != "function":
            raise InvalidRequestError(f'{where}: must be {{"type": "function", "function": {{...}}}}', field=where)
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidRequestError(
                f"{where}.function.name: required (a non-empty string)", field=f"{where}.function.name"
            )
        parameters = function.get("parameters")
        if parameters is not None and (
            not isinstance(parameters, dict) or parameters.get("type", "object") != "object"
        ):
            field = f"{where}.function.parameters"
            raise InvalidRequestError(
                f'{field}: must be a JSON schema of an object ({{"type": "object", ...}})', field=field
            )
        checked.append({"type": "function", "function": function})
    return checked


@dataclass(frozen=True)
class ToolChoice:
    """`mode` auto | none | required | function (then `name` is the function's)."""

    mode: str = "auto"
    name: str | None = None

    @classmethod
    def of(cls, value: str | dict[str, Any] | None, tools: Sequence[Tool]) -> ToolChoice:
        """OpenAI's `tool_choice` ("auto", "none", "required", {"type": "function", "function": {"name": ...}}),
        checked against the tools offered (default: "auto")."""
        if value is None:
            return cls()
        if isinstance(value, str):
            if value not in MODES:
                raise InvalidRequestError(
                    f"tool_choice: must be one of {MODES} or a function, got {value!r}", field="tool_choice"
                )
            choice = cls(value)
        else:
            function = value.get("function") if isinstance(value, dict) else None
            name = function.get("name") if isinstance(function, dict) else None
            if not isinstance(name, str):
                raise InvalidRequestError(
                    'tool_choice: a function is named as {"type": "function", "function": {"name": ...}}',
                    field="tool_choice",
                )
            choice = cls("function", name)
        names = [tool["function"]["name"] for tool in tools]
        if choice.mode in ("required", "function") and not names:
            raise InvalidRequestError(f"tool_choice: {value!r} needs tools, and none were given", field="tool_choice")
        if choice.name is not None and choice.name not in names:
            raise InvalidRequestError(
                f"tool_choice: no tool is named {choice.name!r} (tools: {names})", field="tool_choice"
            )
        return choice

    def processors(self, tools: Sequence[Tool], tokenizer: Tokenizer) -> tuple[LogitsProcessor, ...]:
        """The logits processor "none" needs (none for the others)."""
        open_id = tokenizer.token_id(OPEN)
        return (_Forbid(open_id),) if self.mode == "none" and tools and open_id is not None else ()

    def grammar(self, tools: Sequence[Tool], tokenizer: Tokenizer) -> CallGrammar | None:
        """The grammar of the call "required" or a named function asks for (None for "auto" and "none")."""
        if self.mode not in ("required", "function"):
            return None
        chosen = [(i, t["function"]) for i, t in enumerate(tools) if self.name in (None, t["function"]["name"])]
        calls = []
        for index, function in chosen:
            schema = {
                "type": "object",
                "properties": {
                    "name": {"const": function["name"]},
                    "arguments": function.get("parameters") or {"type": "object"},
                },
                "required": ["name", "arguments"],
                "additionalProperties": False,
                "x-guidance": JSON_OPTIONS,
            }
            call = f"%json {json.dumps(schema, ensure_ascii=False)}"
            try:
                error = LLMatcher.validate_grammar(LLMatcher.grammar_from_lark(f"start: {call}"))
            except ValueError as exc:
                error = str(exc)
            if error:
                field = f"tools[{index}].function.parameters"
                raise InvalidRequestError(f"{field}: cannot be enforced for tool_choice ({error})", field=field)
            calls.append(f"call_{len(calls)}: {call}")
        open_tag, close_tag = (_tag(tokenizer, tag) for tag in (OPEN, CLOSE))
        alternatives = " | ".join(f"call_{i}" for i in range(len(calls)))
        rules = [f'start: {open_tag} "\\n" ({alternatives}) "\\n" {close_tag}', *calls]
        return CallGrammar(LLMatcher.grammar_from_lark("\n".join(rules)))


@dataclass(frozen=True)
class CallGrammar:
    """One tool call as an llguidance grammar, in the shape grammar.py's GrammarConstraint reads (`.grammar`)."""

    grammar: str


def _tag(tokenizer: Tokenizer, tag: str) -> str:
    """A tag in Lark: its special token where the vocabulary has one (the model writes that token), else text."""
    token = tokenizer.token_id(tag)
    return f"<[{token}]>" if token is not None else json.dumps(tag)


class _Forbid:
    """Masks one token (a call's opening tag)."""

    def __init__(self, token: int) -> None:
        self.token = token

    def __call__(self, sequence: SequenceState, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.clone()
        logits[self.token] = float("-inf")
        return logits
