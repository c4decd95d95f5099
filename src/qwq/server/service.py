"""What both HTTP dialects share: the model's prompts, the one request type resolved against the model, the
engine thread that runs it, and the text pipeline's Completion for each submitted request."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
from starlette.requests import Request as HTTPRequest

from qwq.api import Model
from qwq.engine.background import EngineThread, Handle
from qwq.engine.output import Completion
from qwq.engine.request import GenerationParams
from qwq.reasoning.parser import ReasoningSplitter

T = TypeVar("T")
DISCONNECT_POLL_S = 0.25


@dataclass
class Service:
    model: Model
    engine: EngineThread
    name: str
    reasoning_style: tuple[str, bool]
    aliases: tuple[str, ...] = ()
    loaded_at: float = field(default_factory=time.time)
    load_seconds: float = 0.0

    def chat_prompt(self, messages: Sequence[dict[str, Any]]) -> list[int]:
        tokenizer = self.model.tokenizer
        return tokenizer.encode(tokenizer.apply_chat_template(list(messages), add_generation_prompt=True))

    def text_prompt(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            return self.model.tokenizer.encode(prompt)
        return list(prompt)

    def submit(self, prompt_ids: list[int], choices: Sequence[GenerationParams]) -> list[Handle]:
        """Queue one request per choice, all or none, now: bad prompts and a full server fail before any
        response starts."""
        requests = [self.model.request(prompt_ids, params) for params in choices]
        return self.engine.submit(requests)

    def completion(self, handle: Handle) -> Completion:
        """The handle's reply through the text pipeline; closing it cancels the request."""
        params = handle.request.params
        style = self.reasoning_style if params.reasoning.split else ("none", False)
        splitter = ReasoningSplitter(*style)
        return Completion(handle.outputs(), len(handle.request.prompt_ids), splitter, on_close=handle.cancel)

    def token_text(self, token: int) -> str:
        return self.model.tokenizer.decode([token])


async def stream_until_closed(
    lines: Iterator[str], handles: Sequence[Handle], http_request: HTTPRequest
) -> AsyncIterator[str]:
    """Serve a blocking line iterator from a worker thread until it ends or the client goes away (checked
    before each line: the server does not fail a send to a closed connection); either way, cancel its
    requests at once so their KV-cache slots free at the next step."""
    try:
        while (line := await anyio.to_thread.run_sync(next, lines, None, abandon_on_cancel=True)) is not None:
            if await http_request.is_disconnected():
                break
            yield line
    finally:
        for handle in handles:
            handle.cancel()


async def answer_until_closed(work: Callable[[], T], handles: Sequence[Handle], http_request: HTTPRequest) -> T | None:
    """Run a blocking, non-streaming answer in a worker thread while watching the connection: a client that
    goes away cancels its requests (their slots free at the next step) instead of holding them to max_tokens."""
    result: list[T] = []
    failure: list[BaseException] = []

    async def run() -> None:
        try:
            result.append(await anyio.to_thread.run_sync(work, abandon_on_cancel=True))
        except Exception as exc:  # raised outside the task group, as itself (not wrapped in a group)
            failure.append(exc)
        finally:
            scope.cancel_scope.cancel()

    async def watch() -> None:
        while not await http_request.is_disconnected():
            await anyio.sleep(DISCONNECT_POLL_S)
        for handle in handles:
            handle.cancel()

    async with anyio.create_task_group() as scope:
        scope.start_soon(run)
        scope.start_soon(watch)
    if failure:
        raise failure[0]
    return result[0] if result else None
