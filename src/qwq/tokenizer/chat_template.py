"""Rendering a checkpoint's jinja2 chat template with the same semantics as HF transformers.

Sandboxed environment, `trim_blocks`/`lstrip_blocks`, loop controls, a `tojson` that keeps non-ASCII
text, and the `raise_exception` / `strftime_now` helpers that templates call.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from qwq.errors import InvalidRequestError, ModelLoadError

Message = dict[str, Any]


def _raise_exception(message: str) -> None:
    raise InvalidRequestError(f"chat template: {message}")


def _tojson(
    value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None, sort_keys: bool = False
) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=8)
def _compile(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise ModelLoadError(f"chat template does not compile: {exc}") from None


def _check_messages(messages: Sequence[Message]) -> None:
    if not isinstance(messages, Sequence) or isinstance(messages, str) or not messages:
        raise InvalidRequestError("messages must be a non-empty list of {'role': ..., 'content': ...} objects")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise InvalidRequestError(f"messages[{index}] must be an object with a string 'role'")


def _template_messages(messages: Sequence[Message]) -> list[Message]:
    """The messages as templates read them: a tool call's arguments as an object (OpenAI clients send the JSON
    text; Qwen's template writes `arguments | tojson`)."""
    result = []
    for index, message in enumerate(messages):
        calls = message.get("tool_calls")
        if isinstance(calls, list):
            message = {
                **message,
                "tool_calls": [
                    _parsed_call(call, f"messages[{index}].tool_calls[{i}]") for i, call in enumerate(calls)
                ],
            }
        result.append(message)
    return result


def _parsed_call(call: Any, where: str) -> Any:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("arguments"), str):
        return call
    try:
        arguments = json.loads(function["arguments"])
    except json.JSONDecodeError as exc:
        field = f"{where}.function.arguments"
        raise InvalidRequestError(f"{field}: not valid JSON ({exc})", field=field) from None
    return {**call, "function": {**function, "arguments": arguments}}


def render_chat_template(
    template: str,
    messages: Sequence[Message],
    *,
    add_generation_prompt: bool = True,
    tools: list[dict[str, Any]] | None = None,
    special_tokens: dict[str, str | None] | None = None,
    **extra: Any,
) -> str:
    """The prompt text for `messages`, as `tokenizer.apply_chat_template(..., tokenize=False)` gives it."""
    _check_messages(messages)
    try:
        return _compile(template).render(
            messages=_template_messages(messages),
            tools=tools,
            add_generation_prompt=add_generation_prompt,
            **(special_tokens or {}),
            **extra,
        )
    except InvalidRequestError:
        raise
    except jinja2.TemplateError as exc:
        raise InvalidRequestError(f"chat template failed on these messages: {exc}") from None
