"""The Ollama-compatible API's generation: /api/chat, /api/generate (NDJSON streaming, `options`, `think`,
`keep_alive`, durations in nanoseconds; no prompt or messages: load the model, or with keep_alive 0 unload
it, as ollama does), /api/version. The model routes are in ollama_models.py."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, Literal

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import Field

from qwq import __version__
from qwq.engine.output import Piece
from qwq.engine.request import GenerationParams
from qwq.engine.tool_calls import ToolCall, ToolCallStream, parse_tool_calls
from qwq.server.control_fields import CONTROL_NAMES, ControlFields, progress_fields, report_fields
from qwq.server.error_shape import client_names
from qwq.server.format_fields import OLLAMA_FORMAT_NAMES, OllamaFormat, ollama_structured
from qwq.server.keep_alive import keep_alive_seconds
from qwq.server.protocol import RequestBody
from qwq.server.registry import served_by
from qwq.server.service import Service, answer_until_closed, stream_until_closed
from qwq.server.tool_fields import MessageToolCall, ToolDefinition, ollama_calls, template_calls

router = APIRouter(prefix="/api")


# the one request type's fields under Ollama's names (errors say what the client sent)
OPTION_NAMES = {
    "max_tokens": "options.num_predict",
    "context_length": "options.num_ctx",
    "repetition_penalty": "options.repeat_penalty",
    "max_thinking_tokens": "options.think_budget",
    **{name: f"options.{name}" for name in ("temperature", "top_p", "top_k", "min_p", "seed", "stop")},
    **{name: f"options.{name}" for name in ("presence_penalty", "frequency_penalty")},
}


class Options(RequestBody):
    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    min_p: float | None = Field(default=None, ge=0, le=1)
    repeat_penalty: float | None = Field(default=None, gt=0)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    seed: int | None = None
    num_predict: int | None = None
    num_ctx: int | None = Field(default=None, ge=1)
    stop: list[str] | None = None
    think_budget: int | None = Field(default=None, ge=1)  # qwq's option: the thinking budget in tokens

    def params(self, body: ChatRequest | GenerateRequest) -> GenerationParams:
        """Ollama's translation into the one request type: num_predict -1 (or unset) fills the context,
        num_ctx caps this request's context (up to the loaded one); `think` true or a level splits the
        reasoning off, a level also sets the thinking budget (the option `think_budget` overrides it)."""
        effort = body.think if isinstance(body.think, str) else None
        reasoning = body.reasoning_params(split=bool(body.think), effort=effort)
        if self.think_budget is not None:
            reasoning = reasoning.merged(max_thinking_tokens=self.think_budget)
        return GenerationParams.of(
            max_tokens=None if self.num_predict is None or self.num_predict < 0 else self.num_predict,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            min_p=self.min_p,
            repetition_penalty=self.repeat_penalty,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            seed=self.seed,
            stop=self.stop,
            context_length=self.num_ctx,
            reasoning=reasoning,
            structured=ollama_structured(body.format),
        )


class Message(RequestBody):
    role: str
    content: str | None = ""
    tool_calls: list[MessageToolCall] | None = None

    def as_template_message(self) -> dict[str, Any]:
        return {"role": self.role, "content": self.content or "", **template_calls(self.tool_calls)}


class GenerationFields(ControlFields):
    model: str
    stream: bool = True
    options: Options = Field(default_factory=Options)
    think: bool | Literal["low", "medium", "high"] | None = None
    format: OllamaFormat = None
    keep_alive: float | str | None = None  # "5m", seconds, 0 (unload after this), negative (forever)

    def keep_alive_seconds(self) -> float | None:
        return None if self.keep_alive is None else keep_alive_seconds(self.keep_alive)


class ChatRequest(GenerationFields):
    messages: list[Message] = Field(default_factory=list)  # none: load the model (ollama's preload)
    tools: list[ToolDefinition] | None = None


class GenerateRequest(GenerationFields):
    prompt: str = ""  # empty: load the model (ollama's preload)
    system: str | None = None
    raw: bool = False


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _final_fields(piece: Piece, load_seconds: float) -> dict[str, Any]:
    stats = piece.stats
    return {
        "done": True,
        "done_reason": piece.finish_reason,
        "total_duration": int((load_seconds + stats.prompt_seconds + stats.generate_seconds) * 1e9),
        "load_duration": int(load_seconds * 1e9),
        "prompt_eval_count": piece.prompt_tokens,
        "prompt_eval_duration": int(stats.prompt_seconds * 1e9),
        "eval_count": piece.completion_tokens,
        "eval_duration": int(stats.generate_seconds * 1e9),
        **({"error": piece.error} if piece.finish_reason == "error" else {}),
    }


async def _answer(
    http_request: Request,
    service: Service,
    model: str,
    prompt: str | list[dict[str, Any]],
    body: ChatRequest | GenerateRequest,
    shape,
    load_seconds: float,
):
    """Submit now (bad requests fail before a response starts), then answer with NDJSON lines (stream) or one
    object, each body shaped by `shape(text, thinking)`. With `think` the reasoning goes to `thinking`;
    otherwise it stays inline in the text, as ollama does. `load_seconds`: the load this request waited for."""
    prompt_name = "messages" if isinstance(body, ChatRequest) else "prompt"
    tools = [t.model_dump(exclude_none=True) for t in body.tools or ()] if isinstance(body, ChatRequest) else []
    with client_names({**CONTROL_NAMES, **OPTION_NAMES, **OLLAMA_FORMAT_NAMES, "prompt": prompt_name}):
        (handle,) = service.submit(prompt, [body.options.params(body)], tools=tools)
    names = [tool["function"]["name"] for tool in tools]

    def message(text: str, thinking: str, calls: tuple[ToolCall, ...] = (), **fields: Any) -> dict[str, Any]:
        shaped = shape(text, thinking)
        if calls:
            shaped["message"]["tool_calls"] = ollama_calls(calls)
        return {"model": model, "created_at": _now(), **shaped, **fields}

    if not body.stream:

        def answer() -> dict[str, Any]:
            completion, last = service.completion(handle), None
            for piece in completion.pieces():
                last = piece
            if last.finish_reason == "error":  # as ollama answers a failed generation: 500 and the message
                return JSONResponse({"error": last.error}, status_code=500)
            fields = {**_final_fields(last, load_seconds), **report_fields(completion.report)}
            parsed = parse_tool_calls(completion.answer, names) if tools else None
            if parsed is not None:
                return message(parsed.content, completion.reasoning, parsed.calls, **fields)
            return message(completion.answer, completion.reasoning, **fields)

        return await answer_until_closed(answer, [handle], http_request)

    def lines() -> Iterator[str]:
        parsed = ToolCallStream(names) if tools else None
        for piece in service.completion(handle).pieces():
            calls: tuple[ToolCall, ...] = ()
            if parsed is not None:
                piece, calls = parsed.push(piece)
            progress = progress_fields(piece)
            if piece.answer or piece.reasoning or calls or progress:
                yield json.dumps(message(piece.answer, piece.reasoning, calls, done=False, **progress)) + "\n"
            if piece.finish_reason is not None:
                final = {**_final_fields(piece, load_seconds), **report_fields(piece.report)}
                yield json.dumps(message("", "", **final)) + "\n"

    stream = stream_until_closed(lines(), [handle], http_request)
    return StreamingResponse(stream, media_type="application/x-ndjson")


async def _generate(http_request: Request, body: ChatRequest | GenerateRequest, prompt, shape):
    """Load the model if need be (the request waits), then answer; with no prompt, only load it, or with
    keep_alive 0 unload it, and say which (`done_reason` "load" / "unload")."""
    keep_alive = body.keep_alive_seconds()
    models = served_by(http_request)
    if not prompt and keep_alive == 0:
        await anyio.to_thread.run_sync(models.unload, body.model)
        return {"model": body.model, "created_at": _now(), **shape("", ""), "done": True, "done_reason": "unload"}
    arrived = time.time()
    async with models.using(body.model, keep_alive) as service:
        load_seconds = service.load_seconds if service.loaded_at >= arrived else 0.0
        if not prompt:
            return {"model": body.model, "created_at": _now(), **shape("", ""), "done": True, "done_reason": "load"}
        return await _answer(http_request, service, body.model, prompt, body, shape, load_seconds)


@router.post("/chat")
async def chat(body: ChatRequest, request: Request):
    prompt = [m.as_template_message() for m in body.messages]

    def shape(text: str, thinking: str) -> dict[str, Any]:
        message = {"role": "assistant", "content": text}
        if thinking:
            message["thinking"] = thinking
        return {"message": message}

    return await _generate(request, body, prompt, shape)


@router.post("/generate")
async def generate(body: GenerateRequest, request: Request):
    if not body.prompt:
        prompt = ""
    elif body.raw:
        prompt = body.prompt
    else:
        system = [{"role": "system", "content": body.system}] if body.system else []
        prompt = [*system, {"role": "user", "content": body.prompt}]

    def shape(text: str, thinking: str) -> dict[str, Any]:
        return {"response": text, **({"thinking": thinking} if thinking else {})}

    return await _generate(request, body, prompt, shape)


@router.get("/version")
def version() -> dict[str, str]:
    return {"version": __version__}
