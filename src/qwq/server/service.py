"""What both HTTP dialects share for one loaded model: its prompts, the one request type resolved against the
model, the engine thread that runs it, and the text pipeline's Completion for each submitted request (its
tokens and time to first token counted for /metrics)."""

from __future__ import annotations

import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import torch
from starlette.requests import Request as HTTPRequest

from qwq.api import Model
from qwq.engine.background import EngineThread, Handle
from qwq.engine.engine import SequenceOutput
from qwq.engine.output import Completion
from qwq.engine.request import GenerationParams
from qwq.reasoning.guard_protocol import Guard
from qwq.server.metrics import ServerMetrics

T = TypeVar("T")
# the fields `qwq serve`'s sampling flags may set for every request (a request's own value wins)
SERVER_DEFAULTS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "seed", "max_tokens")
DISCONNECT_POLL_S = 0.25


@dataclass
class Service:
    model: Model
    engine: EngineThread
    name: str
    guard: Guard | None = None  # `qwq serve --guard`: run on every prompt and reply unless a request opts out
    defaults: GenerationParams | None = None  # `qwq serve --temperature ...`: for requests that leave them unset
    loaded_at: float = field(default_factory=time.time)
    load_seconds: float = 0.0
    metrics: ServerMetrics | None = None
    _submitted: weakref.WeakKeyDictionary[Handle, float] = field(default_factory=weakref.WeakKeyDictionary)

    @property
    def busy(self) -> bool:
        """Requests accepted and not yet finished (a model is unloaded only when it has none)."""
        return self.engine.engine.has_work

    @property
    def resident_bytes(self) -> int:
        """The memory its weights and KV cache hold (ollama's `size` in /api/ps)."""
        network = self.model.network
        tensors = [*network.parameters(), *network.buffers(), *_tensors(vars(self.engine.engine.cache).values())]
        return sum(t.nelement() * t.element_size() for t in {id(t): t for t in tensors}.values())

    def submit(
        self,
        prompt: list[int] | str | Sequence[dict[str, Any]],
        choices: Sequence[GenerationParams],
        tools: Sequence[dict[str, Any]] | None = None,
        tool_choice: str | dict[str, Any] | None = None,
    ) -> list[Handle]:
        """Queue one request per choice, all or none, now: bad prompts, a prompt the guard blocks and a full
        server fail before any response starts. `prompt`: chat messages (offering `tools`), a text, or token ids."""
        model = self.model
        choices = [self._with_defaults(params) for params in choices]
        if isinstance(prompt, str) or (prompt and not isinstance(prompt[0], dict)):
            ids = model.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
            requests = [model.request(ids, params, guard=self.guard) for params in choices]
        else:
            requests = [
                model.chat_request(list(prompt), params, guard=self.guard, tools=tools, tool_choice=tool_choice)
                for params in choices
            ]
        handles = self.engine.submit(requests)
        for handle in handles:
            self._submitted[handle] = time.perf_counter()
        return handles

    def _with_defaults(self, params: GenerationParams) -> GenerationParams:
        if self.defaults is None:
            return params
        unset = {name: getattr(self.defaults, name) for name in SERVER_DEFAULTS if getattr(params, name) is None}
        return params.merged(**unset)

    def completion(self, handle: Handle) -> Completion:
        """The handle's reply through the text pipeline; closing it cancels the request."""
        request = handle.request
        return Completion(self._counted(handle), request, self.model.splitter_args(request), on_close=handle.cancel)

    def _counted(self, handle: Handle) -> Iterator[SequenceOutput]:
        """The handle's outputs, its first token's delay and its token counts told to the metrics."""
        submitted, first = self._submitted.pop(handle, time.perf_counter()), True
        for output in handle.outputs():
            if self.metrics is not None and first and output.new_ids:
                self.metrics.first_token.labels(self.name).observe(time.perf_counter() - submitted)
                first = False
            if self.metrics is not None and output.finish_reason is not None:
                self.metrics.prompt_tokens.labels(self.name).inc(len(handle.request.prompt_ids))
                self.metrics.generated_tokens.labels(self.name).inc(output.num_output)
            yield output

    def close(self, wait: bool = True) -> None:
        """End what is in flight (finish reason `abort`) and stop the engine's thread."""
        self.engine.close(wait=wait)

    def token_text(self, token: int) -> str:
        return self.model.tokenizer.decode([token])


def _tensors(values: Sequence[Any]) -> Iterator[torch.Tensor]:
    for value in values:
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, list | tuple):
            yield from _tensors(value)


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
