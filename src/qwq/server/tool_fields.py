"""Tool calling at the HTTP edge, the same for both dialects: the `tools` offered, OpenAI's `tool_choice` and
`parallel_tool_calls`, the calls an assistant message carries back, and the parsed calls in each dialect's
reply shape (OpenAI: arguments as JSON text with an id; Ollama: arguments as an object)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field

from qwq.engine.tool_calls import ToolCall
from qwq.server.protocol import RequestBody


class FunctionDefinition(RequestBody):
    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDefinition(RequestBody):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class NamedFunction(RequestBody):
    name: str = Field(min_length=1)


class NamedToolChoice(RequestBody):
    type: Literal["function"] = "function"
    function: NamedFunction


class CalledFunction(RequestBody):
    name: str
    arguments: str | dict[str, Any] = "{}"  # OpenAI sends the JSON text, Ollama the object


class MessageToolCall(RequestBody):
    """A call in an assistant message sent back with the tool's result."""

    id: str | None = None
    type: Literal["function"] = "function"
    function: CalledFunction


def template_calls(calls: Sequence[MessageToolCall] | None) -> dict[str, Any]:
    """An assistant message's calls as the chat template takes them (nothing when it has none)."""
    return {"tool_calls": [call.model_dump(exclude_none=True) for call in calls]} if calls else {}


class ToolFields(RequestBody):
    """Mixed into a chat request body: the tools offered and (OpenAI) how the model may use them."""

    tools: list[ToolDefinition] | None = None
    tool_choice: Literal["auto", "none", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True

    def tool_arguments(self) -> dict[str, Any]:
        """`Service.submit`'s tools and tool_choice, as OpenAI's objects."""
        tools = [tool.model_dump(exclude_none=True) for tool in self.tools or ()]
        choice = self.tool_choice.model_dump() if isinstance(self.tool_choice, NamedToolChoice) else self.tool_choice
        return {"tools": tools, "tool_choice": choice}

    @property
    def parses_calls(self) -> bool:
        """Whether the answer is read for calls: tools are offered and calls are not forbidden."""
        return bool(self.tools) and self.tool_choice != "none"

    @property
    def tool_names(self) -> list[str]:
        return [tool.function.name for tool in self.tools or ()]

    def kept(self, calls: Sequence[ToolCall], before: int) -> tuple[ToolCall, ...]:
        """The calls to report, `before` of the reply's calls already reported: all, or with
        `parallel_tool_calls` false only the reply's first."""
        return tuple(calls) if self.parallel_tool_calls else tuple(calls)[: max(0, 1 - before)]


def openai_calls(calls: Sequence[ToolCall], first_index: int | None = None) -> list[dict[str, Any]]:
    """OpenAI's `tool_calls`; in a stream's delta each call carries its `index` in the reply."""
    shaped = []
    for offset, call in enumerate(calls):
        entry = {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
        shaped.append(entry if first_index is None else {"index": first_index + offset, **entry})
    return shaped


def ollama_calls(calls: Sequence[ToolCall]) -> list[dict[str, Any]]:
    return [{"function": {"name": call.name, "arguments": call.arguments_dict()}} for call in calls]
