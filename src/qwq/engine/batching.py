"""Continuous batching: concurrent requests join and leave one shared decode batch, step by step.

One engine thread owns the model. Each step it admits waiting requests into free KV-cache slots (a
prefill of that prompt alone, which also samples its first token), then runs one decode step for every
running sequence together and hands each its next token. A request leaves its slot as soon as it stops,
hits its budget or is cancelled (a client that went away), so the next waiting one can start at the next
step. Sampling, penalties and stop tokens are per request, with the same functions as single-stream
generation, so a request alone gives exactly the tokens `generate_tokens` gives.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from qwq.engine.generate import GenerateOptions, check_prompt
from qwq.engine.sampling import apply_penalties, needs_penalties, sample
from qwq.errors import QwqError, ServerBusyError
from qwq.model.qwen2 import Qwen2ForCausalLM

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TokenEvent:
    """One generated token, with its log-probability and the top alternatives when they were asked for."""

    token: int
    logprob: float | None = None
    top_logprobs: tuple[tuple[int, float], ...] = ()


@dataclass
class BatchRequest:
    prompt_ids: list[int]
    options: GenerateOptions
    logprobs: int | None = None  # how many top alternatives to report per token (0: just the chosen one)
    events: queue.Queue = field(default_factory=queue.Queue)  # TokenEvent, then None at the end
    cancelled: threading.Event = field(default_factory=threading.Event)
    error: QwqError | None = None

    def tokens(self) -> Iterator[TokenEvent]:
        """The generated tokens as they come; closing the iterator early cancels the request."""
        try:
            while (event := self.events.get()) is not None:
                yield event
        finally:
            self.cancelled.set()
        if self.error is not None:
            raise self.error


@dataclass
class _Running:
    request: BatchRequest
    slot: int
    position: int  # where the next input token goes
    generator: torch.Generator | None
    seen: torch.Tensor | None
    counts: torch.Tensor | None
    produced: int = 0
    last_token: int = -1


class BatchEngine:
    """Owns `model` on a background thread; `submit` from any thread, read `BatchRequest.tokens()`."""

    def __init__(self, model: Qwen2ForCausalLM, context_length: int, max_batch: int = 8, max_waiting: int = 64):
        self.model = model
        self.context_length = context_length
        self.max_batch = max_batch
        self.max_waiting = max_waiting
        self._waiting: deque[BatchRequest] = deque()
        self._wakeup = threading.Condition()
        self._running: list[_Running] = []
        self._stopped = False
        self.device = model.model.embed_tokens.weight.device
        model.setup_cache(max_batch, context_length)
        self._thread = threading.Thread(target=self._loop, name="qwq-batch-engine", daemon=True)
        self._thread.start()

    @property
    def load(self) -> tuple[int, int]:
        """(running, waiting) request counts."""
        return len(self._running), len(self._waiting)

    def submit(self, request: BatchRequest) -> BatchRequest:
        """Queue a request (its prompt checked now); ServerBusyError when the waiting line is full."""
        config = self.model.config
        request.prompt_ids = check_prompt(
            request.prompt_ids, request.options.max_new_tokens, config.vocab_size, self.context_length
        )
        with self._wakeup:
            if len(self._waiting) >= self.max_waiting:
                raise ServerBusyError(f"{len(self._waiting)} requests are already waiting; retry shortly")
            self._waiting.append(request)
            self._wakeup.notify()
        return request

    def close(self) -> None:
        with self._wakeup:
            self._stopped = True
            self._wakeup.notify()
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        while True:
            with self._wakeup:
                while not self._stopped and not self._waiting and not self._running:
                    self._wakeup.wait()
                if self._stopped:
                    break
            try:
                self._step()
            except Exception as exc:  # a bug must fail the requests in flight, not hang them
                logger.exception("batch step failed")
                for running in self._running:
                    running.request.error = QwqError(f"generation failed: {exc}")
                    self._finish(running)
                self._running.clear()

    @torch.inference_mode()
    def _step(self) -> None:
        self._running = [r for r in self._running if not self._finished_by_cancel(r)]
        self._admit()
        if self._running:
            self._decode()

    def _finished_by_cancel(self, running: _Running) -> bool:
        if running.request.cancelled.is_set():
            self._finish(running)
            return True
        return False

    def _admit(self) -> None:
        free = sorted(set(range(self.max_batch)) - {r.slot for r in self._running})
        while free:
            with self._wakeup:
                if not self._waiting:
                    return
                request = self._waiting.popleft()
            if request.cancelled.is_set():
                request.events.put(None)
                continue
            slot = free.pop(0)
            running = self._start(request, slot)
            ids = torch.tensor([request.prompt_ids], device=self.device)
            positions = torch.arange(len(request.prompt_ids), device=self.device)[None]
            logits = self.model.forward_slots(ids, positions, torch.tensor([slot], device=self.device))[0]
            if self._emit(running, logits.float()):
                self._running.append(running)

    def _start(self, request: BatchRequest, slot: int) -> _Running:
        params = request.options.sampling
        vocab = self.model.config.vocab_size
        seen = counts = None
        if needs_penalties(params):
            seen = torch.zeros(vocab, dtype=torch.bool, device=self.device)
            seen[torch.tensor(request.prompt_ids, device=self.device)] = True
            counts = torch.zeros(vocab, dtype=torch.int32, device=self.device)
        return _Running(request, slot, len(request.prompt_ids), params.make_generator(self.device), seen, counts)

    def _decode(self) -> None:
        batch = self._running
        ids = torch.tensor([[r.last_token] for r in batch], device=self.device)  # (B, 1)
        positions = torch.tensor([[r.position] for r in batch], device=self.device)  # (B, 1)
        slots = torch.tensor([r.slot for r in batch], device=self.device)
        logits = self.model.forward_slots(ids, positions, slots).float()  # (B, vocab)
        for running in batch:
            running.position += 1
        self._running = [r for r, row in zip(batch, logits, strict=True) if self._emit(r, row)]

    def _emit(self, running: _Running, logits: torch.Tensor) -> bool:
        """Sample and hand over one token; False when the request is done (and then finished)."""
        request = running.request
        if request.cancelled.is_set():
            self._finish(running)
            return False
        params = request.options.sampling
        raw = logits
        if running.seen is not None:
            logits = apply_penalties(logits, params, running.seen, running.counts)
        token = sample(logits, params, running.generator)
        request.events.put(self._event(token, raw, request.logprobs))
        running.produced += 1
        running.last_token = token
        if running.seen is not None:
            running.seen[token] = True
            running.counts[token] += 1
        options = request.options
        stop_ids = () if options.ignore_eos else options.stop_token_ids
        if token in stop_ids or running.produced >= options.max_new_tokens:
            self._finish(running)
            return False
        return True

    @staticmethod
    def _event(token: int, logits: torch.Tensor, top: int | None) -> TokenEvent:
        if top is None:
            return TokenEvent(token)
        logprobs = torch.log_softmax(logits, dim=-1)
        best = torch.topk(logprobs, top) if top else None
        alternatives = () if best is None else tuple(zip(best.indices.tolist(), best.values.tolist(), strict=True))
        return TokenEvent(token, float(logprobs[token]), alternatives)

    def _finish(self, running: _Running) -> None:
        running.request.events.put(None)
