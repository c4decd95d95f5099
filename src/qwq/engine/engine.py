"""The one generation loop: every request — a CLI answer, a Python call, a server's hundredth stream — is a
sequence in an `Engine`, and `Engine.step` advances all of them together.

A step admits waiting requests into free KV-cache slots, feeds the model what each sequence's cache lacks
(scheduler.py: batched one-token decodes plus prompt chunks under a token budget), passes each sequence's
logits through its processor chain, samples, appends, runs its token hooks, and applies the one stop check.
The engine owns the KV cache, and optionally a prefix cache (prefix_cache.py: a new prompt starts after its
longest cached prefix) and speculative decoding (drafting.py: drafted tokens verified as extra rows of the
step's one forward). A failure fails only the request at fault (finish reason `error`, with a
message); the others go on. `Engine.stream` is the synchronous driver (one request, this thread);
`background.EngineThread` drives the same engine for the server.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from qwq.engine.drafting import MAX_DRAFT, PromptLookupDrafter
from qwq.engine.prefix_cache import BLOCK, PrefixCache
from qwq.engine.processors import default_chain
from qwq.engine.request import Request, check_prompt
from qwq.engine.sampling import make_generator, sample
from qwq.engine.scheduler import Scheduler
from qwq.engine.sequence import Notice, SequenceState, TokenEvent
from qwq.engine.stop import check_stop
from qwq.errors import ContextLengthError, InvalidRequestError, QwqError, ServerBusyError
from qwq.model.qwen2 import Qwen2ForCausalLM
from qwq.tokenizer.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

DEFAULT_PREFILL_CHUNK = 512  # prompt tokens per step: a 512-token prompt is one chunk, a long one many


@dataclass(frozen=True)
class SequenceOutput:
    """What one step produced for one request: new text (stop strings applied), the visible new tokens, the
    output's length so far, and once it ends its finish reason (and for `error`, the message)."""

    request_id: int
    text: str = ""
    events: tuple[TokenEvent, ...] = ()
    start: int = 0  # the output ids from this index on are `new_ids` (earlier ones are as handed out before)
    new_ids: tuple[int, ...] = ()
    num_output: int = 0
    finish_reason: str | None = None
    error: str | None = None
    rolled_back: int = 0
    text_start: int = 0  # `text` replaces the reply's text from this character on (a rollback takes text back)
    notices: tuple[Notice, ...] = ()
    cached_tokens: int = 0  # prompt tokens served by the prefix cache


@dataclass
class _Inbox:
    waiting: list[Request] = field(default_factory=list)
    aborted: set[int] = field(default_factory=set)


# rows of one step's forward, drafts included: where the decode kernels' cost per row is still small
MAX_ROWS = 16


def decode_rows_exact(model: Qwen2ForCausalLM) -> bool:
    """Whether a one-token row computes the same numbers whatever else is in the forward: every layer's decode
    step and the LM head on qwq's kernels (rows independent); what speculative decoding needs to be exact."""
    head = model.lm_head
    return all(layer.native_step is not None for layer in model.model.layers) and bool(getattr(head, "native", False))


def _failure_message(exc: Exception) -> str:
    if isinstance(exc, QwqError):
        return str(exc)
    return f"generation failed: {type(exc).__name__}: {exc}"


class Engine:
    def __init__(
        self,
        model: Qwen2ForCausalLM,
        tokenizer: Tokenizer | None,
        context_length: int,
        max_batch: int = 1,
        max_waiting: int = 64,
        prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
        prefix_cache: PrefixCache | None = None,
        speculative: bool | None = None,
    ) -> None:
        """prefix_cache: the pool of cached prompt prefixes to use (it may be shared by several engines of one
        model); speculative: draft by prompt lookup (None: where it is exact, see `decode_rows_exact`)."""
        if max_batch < 1 or max_waiting < 0 or prefill_chunk < 1:
            raise InvalidRequestError("max_batch and prefill_chunk must be at least 1, max_waiting at least 0")
        if prefix_cache is not None and prefill_chunk % BLOCK:
            raise InvalidRequestError(f"with a prefix cache, prefill_chunk must be a multiple of {BLOCK}")
        self.model = model
        self.tokenizer = tokenizer
        self.context_length = context_length
        self.max_waiting = max_waiting
        self.device = model.model.embed_tokens.weight.device
        self.cache = model.new_cache(max_batch, context_length)
        self.prefix_cache = prefix_cache
        self.speculative = decode_rows_exact(model) if speculative is None else speculative
        self.drafted_tokens = 0  # speculative decoding so far: tokens drafted, and kept
        self.kept_tokens = 0
        self.scheduler = Scheduler(max_batch, prefill_chunk)
        self._lock = threading.Lock()  # guards the inbox: add and abort come from any thread
        self._inbox = _Inbox()
        self._in_flight = 0  # accepted and not yet finished

    @property
    def max_batch(self) -> int:
        return self.scheduler.max_batch

    @property
    def load(self) -> tuple[int, int]:
        """(running, waiting) request counts."""
        running = len(self.scheduler.running)
        return running, self._in_flight - running

    @property
    def has_work(self) -> bool:
        return self._in_flight > 0

    def add(self, requests: Sequence[Request]) -> None:
        """Accept requests, all or none (a request's n choices go in together). Each prompt and budget is
        checked now, so a bad request fails at the call; ServerBusyError when slots and waiting line are full."""
        for request in requests:
            request.prompt_ids = check_prompt(request.prompt_ids, self.model.config.vocab_size)
            budget = request.params.max_tokens
            if budget is None:
                raise InvalidRequestError("the engine runs resolved params: call GenerationParams.resolved first")
            if len(request.prompt_ids) + budget > self.context_length:
                raise ContextLengthError(
                    f"the prompt ({len(request.prompt_ids)} tokens) + max_tokens ({budget}) exceeds the "
                    f"engine's context of {self.context_length} tokens"
                )
        with self._lock:
            capacity = self.max_batch + self.max_waiting
            if self._in_flight + len(requests) > capacity:
                raise ServerBusyError(
                    f"{self._in_flight} requests are running or waiting (capacity {capacity}); retry shortly"
                )
            self._in_flight += len(requests)
            self._inbox.waiting.extend(requests)

    def abort(self, request_id: int) -> None:
        """End a request at the next step (finish reason `abort`); its slot frees at once."""
        with self._lock:
            self._inbox.aborted.add(request_id)

    def stream(self, request: Request) -> Iterator[SequenceOutput]:
        """The synchronous driver: run `request` on this thread to its end; closing the iterator aborts it."""
        self.add([request])
        try:
            while True:
                for output in self.step():
                    if output.request_id == request.request_id:
                        yield output
                        if output.finish_reason is not None:
                            return
        finally:
            self.abort(request.request_id)
            self.step_aborts()

    # -- the step
    @torch.inference_mode()
    def step(self) -> list[SequenceOutput]:
        """Advance every running sequence by one step; the outputs of the requests that produced something."""
        outputs = self.step_aborts()
        self._admit(outputs)
        plan = self.scheduler.plan()
        if plan.decode:
            self._decode(plan.decode)
        for sequence, count in plan.prefill:
            self._prefill(sequence, count)
        for sequence in [*plan.decode, *(s for s, _ in plan.prefill)]:
            output = self._output(sequence)
            if output.new_ids or output.text or output.finish_reason or output.notices:
                outputs.append(output)
        self._release_finished()
        return outputs

    def step_aborts(self) -> list[SequenceOutput]:
        """Apply the aborts asked for since the last step; their final outputs."""
        with self._lock:
            aborted, self._inbox.aborted = self._inbox.aborted, set()
            dropped = [r for r in self._inbox.waiting if r.request_id in aborted]
            self._inbox.waiting = [r for r in self._inbox.waiting if r.request_id not in aborted]
        queued = [r for r in self.scheduler.waiting if r.request_id in aborted]
        for request in queued:
            self.scheduler.waiting.remove(request)
        outputs = [SequenceOutput(r.request_id, finish_reason="abort") for r in [*dropped, *queued]]
        self._in_flight -= len(dropped) + len(queued)
        for sequence in self.scheduler.running:
            if sequence.request.request_id in aborted:
                sequence.finish("abort")
                outputs.append(self._output(sequence))
        self._release_finished()
        return outputs

    def end_all(self, reason: str, message: str) -> list[SequenceOutput]:
        """End every request, running or waiting, with `reason` and `message` (an engine bug: `error`; a
        shutdown: `abort`); running ones keep what they produced."""
        with self._lock:
            waiting, self._inbox.waiting = self._inbox.waiting, []
        waiting += list(self.scheduler.waiting)
        self.scheduler.waiting.clear()
        outputs = [SequenceOutput(r.request_id, finish_reason=reason, error=message) for r in waiting]
        self._in_flight -= len(waiting)
        for sequence in self.scheduler.running:
            sequence.finish(reason, message)
            outputs.append(self._output(sequence))
        self._release_finished()
        return outputs

    def _admit(self, outputs: list[SequenceOutput]) -> None:
        with self._lock:
            self.scheduler.waiting.extend(self._inbox.waiting)
            self._inbox.waiting = []
        free = self.scheduler.free_slots()
        while free and self.scheduler.waiting:
            request = self.scheduler.waiting.popleft()
            sequence = SequenceState(request, free.pop(0), self.tokenizer, self.model.config.vocab_size, self.device)
            try:
                sequence.generator = make_generator(request.params, self.device)
            except Exception as exc:  # a seed torch refuses: this request fails, the rest go on
                sequence.finish("error", _failure_message(exc))
                outputs.append(self._output(sequence))
                self._in_flight -= 1
                free.insert(0, sequence.slot)
                continue
            if self.prefix_cache is not None:
                sequence.num_computed = sequence.cached_tokens = self._load_prefix(sequence)
            if self.speculative:
                sequence.drafter = PromptLookupDrafter()
            self.scheduler.running.append(sequence)

    def _load_prefix(self, sequence: SequenceState) -> int:
        try:
            return self.prefix_cache.load(sequence.token_ids, self.cache, sequence.slot)
        except Exception:  # the cache is an optimization: a failure computes the prompt instead
            logger.exception("prefix cache lookup failed for request %d", sequence.request.request_id)
            return 0

    def _decode(self, batch: list[SequenceState]) -> None:
        """One forward for every one-token sequence, each with its drafted tokens as further rows; if it fails,
        each sequence alone, so only the faulty fail."""
        drafts = self._drafts(batch)
        rows = [
            (sequence, sequence.num_computed + i, token)
            for sequence, draft in zip(batch, drafts, strict=True)
            for i, token in enumerate(sequence.pending + draft)
        ]
        try:
            logits = self._forward_rows(rows)
        except Exception:
            if len(batch) == 1:
                self._forward_failed(batch[0])
            else:
                for sequence in batch:
                    self._decode([sequence])
            return
        first = 0
        for sequence, draft in zip(batch, drafts, strict=True):
            self._accept(sequence, draft, logits[first : first + 1 + len(draft)])
            first += 1 + len(draft)

    def _drafts(self, batch: list[SequenceState]) -> list[list[int]]:
        """Each sequence's drafted tokens, within the rows a step may have, its token budget and the cache."""
        spare = MAX_ROWS - len(batch)
        drafts: list[list[int]] = []
        for sequence in batch:
            draft: list[int] = []
            if sequence.drafter is not None and spare > 0:
                room = min(
                    spare,
                    MAX_DRAFT,
                    sequence.params.max_tokens - sequence.num_output - 1,
                    self.context_length - len(sequence.token_ids) - 1,
                )
                draft = sequence.drafter.draft(sequence.token_ids, room) if room > 0 else []
            spare -= len(draft)
            drafts.append(draft)
        return drafts

    def _accept(self, sequence: SequenceState, draft: list[int], logits: torch.Tensor) -> None:
        """Choose tokens from the rows of one sequence in order: row i was fed draft token i-1, so its logits
        are valid only while every token chosen so far equals its draft (and no hook changed the sequence)."""
        start = sequence.num_computed
        kept = 0
        for index, row in enumerate(logits):
            sequence.num_computed = start + index + 1
            self._advance(sequence, row)
            if index == len(draft) or sequence.finished or sequence.pending != [draft[index]]:
                break
            kept += 1
        if sequence.drafter is not None:
            sequence.drafter.record(len(draft), kept)
        self.drafted_tokens += len(draft)
        self.kept_tokens += kept

    def _prefill(self, sequence: SequenceState, count: int) -> None:
        start = sequence.num_computed
        try:
            logits = self._forward_chunk(sequence, sequence.token_ids[start : start + count])
        except Exception:
            self._forward_failed(sequence)
            return
        sequence.num_computed += count
        if self.prefix_cache is not None and start < sequence.prompt_length:
            self._store_prefix(sequence)
        if not sequence.pending:  # prompt (or forced tokens) all in: the logits after them choose the next token
            self._advance(sequence, logits[0])

    def _store_prefix(self, sequence: SequenceState) -> None:
        try:
            computed = min(sequence.num_computed, sequence.prompt_length)
            self.prefix_cache.store(sequence.token_ids, computed, self.cache, sequence.slot)
        except Exception:  # the cache is an optimization: the request goes on without it
            logger.exception("prefix cache store failed for request %d", sequence.request.request_id)

    def _forward_failed(self, sequence: SequenceState) -> None:
        logger.exception("forward failed for request %d", sequence.request.request_id)
        sequence.finish("error", "generation failed in the model's forward pass (see the server log)")

    def _forward_chunk(self, sequence: SequenceState, chunk: list[int]) -> torch.Tensor:
        """Logits after one sequence's chunk of tokens, fed from its first uncomputed position: (1, vocab)."""
        device = self.device
        ids = torch.tensor([chunk], device=device)  # (1, T)
        positions = sequence.num_computed + torch.arange(len(chunk), device=device)[None]  # (1, T)
        slots = torch.tensor([sequence.slot], device=device)
        return self.model(ids, positions, self.cache, slots, last_only=True)[:, -1].float()

    def _forward_rows(self, rows: list[tuple[SequenceState, int, int]]) -> torch.Tensor:
        """Logits after each one-token row (sequence, position, token); rows of one sequence at consecutive
        positions see each other's entries (all are written before any attends): (rows, vocab)."""
        device = self.device
        ids = torch.tensor([[token] for _, _, token in rows], device=device)  # (R, 1)
        positions = torch.tensor([[position] for _, position, _ in rows], device=device)
        slots = torch.tensor([s.slot for s, _, _ in rows], device=device)
        return self.model(ids, positions, self.cache, slots, last_only=True)[:, -1].float()

    def _advance(self, sequence: SequenceState, logits: torch.Tensor) -> None:
        """Choose, append and check one token; any failure here ends only this sequence."""
        params = sequence.params
        try:
            raw = logits
            for processor in (*default_chain(params), *sequence.request.processors):
                logits = processor(sequence, logits)
            token = sample(logits, params, sequence.generator)
            sequence.append(self._event(token, raw, params.logprobs))
            for hook in sequence.request.hooks:
                hook(sequence, token)
                if sequence.finished:
                    break
            reason = check_stop(sequence)
            if reason is not None:
                sequence.finish(reason)
        except Exception as exc:
            if not isinstance(exc, QwqError):
                logger.exception("request %d failed while choosing a token", sequence.request.request_id)
            sequence.finish("error", _failure_message(exc))

    @staticmethod
    def _event(token: int, logits: torch.Tensor, top: int | None) -> TokenEvent:
        if top is None:
            return TokenEvent(token)
        logprobs = torch.log_softmax(logits, dim=-1)
        alternatives: tuple[tuple[int, float], ...] = ()
        if top:
            best = torch.topk(logprobs, top)
            alternatives = tuple(zip(best.indices.tolist(), best.values.tolist(), strict=True))
        return TokenEvent(token, float(logprobs[token]), alternatives)

    @staticmethod
    def _output(sequence: SequenceState) -> SequenceOutput:
        text, text_start, events, start, new_ids, notices = sequence.take_output()
        return SequenceOutput(
            sequence.request.request_id,
            text,
            tuple(events),
            start,
            tuple(new_ids),
            sequence.num_output,
            sequence.finish_reason,
            sequence.error,
            sequence.rolled_back,
            text_start,
            tuple(notices),
            sequence.cached_tokens,
        )

    def _release_finished(self) -> None:
        done = [s for s in self.scheduler.running if s.finished]
        if done:
            self.scheduler.running = [s for s in self.scheduler.running if not s.finished]
            self._in_flight -= len(done)
