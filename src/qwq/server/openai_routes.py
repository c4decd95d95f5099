"""The OpenAI-compatible API: /v1/chat/completions, /v1/completions, /v1/models, with SSE streaming in the
OpenAI chunk format, usage, logprobs, n choices, and the reasoning as `reasoning_content` (as vLLM does)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import Field

from qwq.engine.output import Piece
from qwq.engine.request import SEED_RANGE, GenerationParams
from qwq.engine.tool_calls import ToolCallStream, parse_tool_calls
from qwq.errors import InvalidRequestError
from qwq.server.control_fields import CONTROL_NAMES, ControlFields, progress_fields, report_fields
from qwq.server.error_shape import client_names
from qwq.server.format_fields import ResponseFormat
from qwq.server.protocol import RequestBody
from qwq.server.registry import served_by
from qwq.server.served_models import ServedModel
from qwq.server.service import Service, answer_until_closed, stream_until_closed
from qwq.server.tool_fields import MessageToolCall, ToolFields, openai_calls, template_calls

router = APIRouter(prefix="/v1")


class ContentPart(RequestBody):
    type: Literal["text"]
    text: str


class ChatMessage(RequestBody):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[ContentPart] | None = None
    tool_calls: list[MessageToolCall] | None = None
    tool_call_id: str | None = None

    def as_template_message(self) -> dict[str, Any]:
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content or [])
        role = "system" if self.role == "developer" else self.role
        call_id = {"tool_call_id": self.tool_call_id} if self.tool_call_id else {}
        return {"role": role, "content": text, **template_calls(self.tool_calls), **call_id}


class StreamOptions(RequestBody):
    include_usage: bool = False


class SamplingFields(ControlFields):
    model: str
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    min_p: float | None = Field(default=None, ge=0, le=1)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    repetition_penalty: float | None = Field(default=None, gt=0)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(default=1, ge=1, le=16)
    response_format: ResponseFormat | None = None

    def params(self, max_tokens: int | None, logprobs: int | None, index: int) -> GenerationParams:
        """The OpenAI dialect's translation into the one request type (choice `index` seeded seed + index)."""
        return GenerationParams.of(
            max_tokens=max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            min_p=self.min_p,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            repetition_penalty=self.repetition_penalty,
            stop=self.stop,
            seed=None if self.seed is None else _choice_seed(self.seed, index),
            logprobs=logprobs,
            reasoning=self.reasoning_params(split=isinstance(self, ChatCompletionRequest)),
            structured=self.response_format.structured() if self.response_format else None,
        )


class ChatCompletionRequest(SamplingFields, ToolFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)


class CompletionRequest(SamplingFields):
    prompt: str | list[int]
    max_tokens: int | None = Field(default=16, ge=1)  # the OpenAI API's default for completions
    logprobs: int | None = Field(default=None, ge=0, le=20)


def _choice_seed(seed: int, index: int) -> int:
    """Choice `index` of n samples with seed + index, wrapped into the seed range (2**64 - 1 + 1 is 0)."""
    if seed > SEED_RANGE[1] or seed + index <= SEED_RANGE[1]:
        return seed + index  # in range, or out of range already (and refused as the client sent it)
    return (seed + index) % 2**64


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _token_bytes(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def _chat_logprobs(service: Service, piece: Piece, top: int | None) -> dict[str, Any] | None:
    if top is None:
        return None
    entries = []
    for event in piece.events:
        token = service.token_text(event.token)
        alternatives = [
            {"token": (t := service.token_text(i)), "logprob": lp, "bytes": _token_bytes(t)}
            for i, lp in event.top_logprobs
        ]
        entries.append(
            {"token": token, "logprob": event.logprob, "bytes": _token_bytes(token), "top_logprobs": alternatives}
        )
    return {"content": entries}


def _model_object(served: ServedModel) -> dict[str, Any]:
    try:
        created = int(served.path.stat().st_mtime)
    except OSError:  # its files went since it was listed
        created = 0
    return {"id": served.name, "object": "model", "created": created, "owned_by": "qwq"}


@router.get("/models")
def list_models(request: Request) -> dict[str, Any]:
    """Every model this server serves (loaded on first use), those given at start first."""
    return {"object": "list", "data": [_model_object(served) for served in served_by(request).catalog.served()]}


@router.get("/models/{model_id:path}")
def get_model(model_id: str, request: Request) -> dict[str, Any]:
    return _model_object(served_by(request).catalog.find(model_id))


def _error_field(piece: Piece) -> dict[str, Any]:
    """A choice that failed inside generation says why, next to its finish reason 'error'."""
    return {"error": {"message": piece.error, "type": "server_error"}} if piece.finish_reason == "error" else {}


@router.post("/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request):
    async with served_by(request).using(body.model) as service:
        return await _chat_completions(body, request, service)


async def _chat_completions(body: ChatCompletionRequest, request: Request, service: Service):
    messages = [m.as_template_message() for m in body.messages]
    max_tokens = body.max_completion_tokens or body.max_tokens
    max_tokens_name = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
    top = (body.top_logprobs or 0) if body.logprobs else None
    names = {**CONTROL_NAMES, "prompt": "messages", "logprobs": "top_logprobs", "max_tokens": max_tokens_name}
    with client_names(names):
        choices = [body.params(max_tokens, top, index) for index in range(body.n)]
        handles = service.submit(messages, choices, **body.tool_arguments())
    prompt_tokens = len(handles[0].request.prompt_ids)
    completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    base = {"id": completion_id, "created": created, "model": body.model}

    if not body.stream:

        def answer() -> dict[str, Any]:
            choices, completion_tokens = [], 0
            for index, handle in enumerate(handles):
                logprobs, last = [], None
                completion = service.completion(handle)
                for piece in completion.pieces():
                    if top is not None:
                        logprobs.extend(_chat_logprobs(service, piece, top)["content"])
                    last = piece
                completion_tokens += last.completion_tokens
                reasoning = completion.reasoning or None
                message = {"role": "assistant", "content": completion.answer, "reasoning_content": reasoning}
                finish_reason = last.finish_reason
                parsed = parse_tool_calls(completion.answer, body.tool_names) if body.parses_calls else None
                if parsed is not None and (calls := body.kept(parsed.calls, 0)):
                    message["content"] = parsed.content or None
                    message["tool_calls"] = openai_calls(calls)
                    finish_reason = "tool_calls" if finish_reason == "stop" else finish_reason
                choices.append(
                    {
                        "index": index,
                        "message": message,
                        "logprobs": {"content": logprobs} if top is not None else None,
                        "finish_reason": finish_reason,
                        **_error_field(last),
                        **report_fields(completion.report),
                    }
                )
            usage = _usage(prompt_tokens, completion_tokens)
            return {**base, "object": "chat.completion", "choices": choices, "usage": usage}

        return await answer_until_closed(answer, handles, request)

    def events() -> Iterator[str]:
        chunk = {**base, "object": "chat.completion.chunk"}
        completion_tokens = 0
        for index, handle in enumerate(handles):
            first = {
                "index": index,
                "delta": {"role": "assistant", "content": ""},
                "logprobs": None,
                "finish_reason": None,
            }
            yield _sse({**chunk, "choices": [first]})
            parsed = ToolCallStream(body.tool_names) if body.parses_calls else None
            reported = 0
            for piece in service.completion(handle).pieces():
                delta = {}
                if parsed is not None:
                    piece, calls = parsed.push(piece)
                    if calls := body.kept(calls, reported):
                        delta["tool_calls"] = openai_calls(calls, first_index=reported)
                        reported += len(calls)
                if piece.reasoning:
                    delta["reasoning_content"] = piece.reasoning
                if piece.answer:
                    delta["content"] = piece.answer
                progress = progress_fields(piece)
                if delta or progress or piece.events and top is not None:
                    choice = {"index": index, "delta": delta, "logprobs": _chat_logprobs(service, piece, top)}
                    yield _sse({**chunk, "choices": [{**choice, "finish_reason": None, **progress}]})
                if piece.finish_reason is not None:
                    completion_tokens += piece.completion_tokens
                    finish_reason = "tool_calls" if reported and piece.finish_reason == "stop" else piece.finish_reason
                    final = {"index": index, "delta": {}, "logprobs": None, "finish_reason": finish_reason}
                    extra = {**_error_field(piece), **report_fields(piece.report)}
                    yield _sse({**chunk, "choices": [{**final, **extra}]})
        if body.stream_options and body.stream_options.include_usage:
            yield _sse({**chunk, "choices": [], "usage": _usage(prompt_tokens, completion_tokens)})
        yield "data: [DONE]\n\n"

    return StreamingResponse(stream_until_closed(events(), handles, request), media_type="text/event-stream")


def _completion_logprobs(service: Service, piece: Piece, offset: int) -> dict[str, list]:
    tokens, values, tops, offsets = [], [], [], []
    for event in piece.events:
        text = service.token_text(event.token)
        tokens.append(text)
        values.append(event.logprob)
        tops.append({service.token_text(i): lp for i, lp in event.top_logprobs})
        offsets.append(offset)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}


@router.post("/completions")
async def completions(body: CompletionRequest, request: Request):
    if not body.prompt:
        raise InvalidRequestError("prompt: must not be empty", field="prompt")
    async with served_by(request).using(body.model) as service:
        return await _completions(body, request, service)


async def _completions(body: CompletionRequest, request: Request, service: Service):
    with client_names(CONTROL_NAMES):
        handles = service.submit(body.prompt, [body.params(body.max_tokens, body.logprobs, i) for i in range(body.n)])
    prompt_tokens = len(handles[0].request.prompt_ids)
    base = {
        "id": f"cmpl-{uuid.uuid4().hex}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": body.model,
    }

    if not body.stream:

        def answer() -> dict[str, Any]:
            choices, completion_tokens = [], 0
            for index, handle in enumerate(handles):
                last, written = None, 0
                merged = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
                completion = service.completion(handle)
                for piece in completion.pieces():
                    if body.logprobs is not None:
                        for key, values in _completion_logprobs(service, piece, written).items():
                            merged[key].extend(values)
                    written += len(piece.answer) - piece.retracted_answer
                    last = piece
                completion_tokens += last.completion_tokens
                logprobs = merged if body.logprobs is not None else None
                choice = {"index": index, "text": completion.answer, "logprobs": logprobs}
                extra = {**_error_field(last), **report_fields(completion.report)}
                choices.append({**choice, "finish_reason": last.finish_reason, **extra})
            return {**base, "choices": choices, "usage": _usage(prompt_tokens, completion_tokens)}

        return await answer_until_closed(answer, handles, request)

    def events() -> Iterator[str]:
        completion_tokens = 0
        for index, handle in enumerate(handles):
            written = 0
            for piece in service.completion(handle).pieces():
                logprobs = _completion_logprobs(service, piece, written) if body.logprobs is not None else None
                written += len(piece.answer) - piece.retracted_answer
                progress = progress_fields(piece, final=piece.finish_reason is not None)
                if piece.answer or piece.finish_reason or progress:
                    choice = {
                        "index": index,
                        "text": piece.answer,
                        "logprobs": logprobs,
                        "finish_reason": piece.finish_reason,
                        **_error_field(piece),
                        **progress,
                    }
                    yield _sse({**base, "choices": [choice]})
                if piece.finish_reason:
                    completion_tokens += piece.completion_tokens
        if body.stream_options and body.stream_options.include_usage:
            yield _sse({**base, "choices": [], "usage": _usage(prompt_tokens, completion_tokens)})
        yield "data: [DONE]\n\n"

    return StreamingResponse(stream_until_closed(events(), handles, request), media_type="text/event-stream")
