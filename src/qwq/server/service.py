"""The one internal request both HTTP dialects translate into, and its run on the batching engine: text
pieces (detokenized, stop strings applied, reasoning split from answer) with their tokens' log-probs.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
from starlette.requests import Request

from qwq.api import Model
from qwq.engine.batching import BatchEngine, BatchRequest, TokenEvent
from qwq.engine.generate import GenerateOptions, GenerationStats, TextStream
from qwq.errors import InvalidRequestError
from qwq.reasoning.parser import ReasoningSplitter


@dataclass
class Piece:
    """New text of one choice; the last piece of a choice carries the finish reason and the counts."""

    reasoning: str = ""
    answer: str = ""
    events: list[TokenEvent] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    stats: GenerationStats | None = None


@dataclass
class Service:
    model: Model
    engine: BatchEngine
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

    def options(
        self,
        prompt_ids: list[int],
        max_tokens: int | None,
        stop: str | list[str] | None,
        seed: int | None,
        sampling: dict[str, Any],
    ) -> GenerateOptions:
        """Checked options; the context check is also made here so that its error names the request's field."""
        if max_tokens is not None and len(prompt_ids) + max_tokens > self.model.context_length:
            raise InvalidRequestError(
                f"max_tokens: the prompt ({len(prompt_ids)} tokens) + max_tokens ({max_tokens}) exceeds the "
                f"context length of {self.model.context_length} tokens"
            )
        return self.model.generation_options(len(prompt_ids), max_tokens, stop, None, False, seed, sampling)

    def submit(self, prompt_ids: list[int], options: GenerateOptions, logprobs: int | None) -> BatchRequest:
        """Queue now (so bad prompts and a full queue fail before any response starts)."""
        return self.engine.submit(BatchRequest(prompt_ids, options, logprobs))

    def pieces(self, request: BatchRequest, split_reasoning: bool) -> Iterator[Piece]:
        """The request's text as it is generated; closing this iterator cancels the request."""
        events: list[TokenEvent] = []
        options = request.options
        stop_ids = () if options.ignore_eos else options.stop_token_ids

        def token_ids() -> Iterator[int]:
            try:
                for event in request.tokens():
                    if event.token not in stop_ids:  # the stop token is not part of the text, nor of its logprobs
                        events.append(event)
                    yield event.token
            finally:
                request.cancelled.set()

        tokens = token_ids()
        text = TextStream(tokens, self.model.tokenizer, request.options, prompt_tokens=len(request.prompt_ids))
        splitter = ReasoningSplitter(*self.reasoning_style) if split_reasoning else ReasoningSplitter("none")
        handed = 0
        try:
            for chunk in text:
                delta = splitter.push(chunk)
                yield Piece(delta.reasoning, delta.answer, events[handed:])
                handed = len(events)
            delta = splitter.flush()
            yield Piece(
                delta.reasoning,
                delta.answer,
                events[handed:],
                finish_reason=text.finish_reason,
                prompt_tokens=len(request.prompt_ids),
                completion_tokens=len(text.token_ids),
                stats=text.stats,
            )
        finally:
            tokens.close()

    def token_text(self, token: int) -> str:
        return self.model.tokenizer.decode([token])


async def stream_until_closed(
    lines: Iterator[str], requests: Sequence[BatchRequest], http_request: Request
) -> AsyncIterator[str]:
    """Serve a blocking line iterator from a worker thread until it ends or the client goes away (checked
    before each line: the server does not fail a send to a closed connection); either way, cancel its
    requests at once so their KV-cache slots free at the next step."""
    try:
        while (line := await anyio.to_thread.run_sync(next, lines, None)) is not None:
            if await http_request.is_disconnected():
                break
            yield line
    finally:
        for request in requests:
            request.cancelled.set()
