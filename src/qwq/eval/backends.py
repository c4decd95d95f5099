"""Where replies come from, behind one protocol: qwq's own engine in this process (every pending sample
submitted at once, continuously batched), or any OpenAI-compatible endpoint (qwq serve, vLLM, SGLang,
llama-server, Ollama's /v1) with concurrent requests, long timeouts and retries with backoff.

A backend takes Jobs (the chat messages and the Python API's `Model.params` keywords) and yields each Reply as
it ends, tagged with the job's index, so the runner can log every sample the moment it is done.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from qwq.engine.reasoning_split import ReasoningSplitter
from qwq.errors import InvalidRequestError, QwqError

if TYPE_CHECKING:
    import httpx

    from qwq.api import Model
    from qwq.engine.output import Completion
    from qwq.tokenizer.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
FATAL_STATUSES = frozenset({401, 403, 404})  # every request would fail the same way: stop the run


@dataclass(frozen=True)
class Job:
    """One sample to generate: the chat, and the generation keywords of `qwq.Model.params`."""

    messages: list[dict[str, str]]
    params: dict[str, Any]


@dataclass(frozen=True)
class Reply:
    """A finished reply: its text split into reasoning and answer, why it ended, its token counts (the split
    of the completion's tokens between reasoning and answer), the output token ids when the backend has them,
    the seconds from submission to end, and the reasoning controls' report."""

    text: str
    reasoning: str
    answer: str
    finish_reason: str
    prompt_tokens: int = 0
    reasoning_tokens: int = 0
    answer_tokens: int = 0
    token_ids: list[int] | None = None
    seconds: float = 0.0
    error: str | None = None
    controls: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def failed(cls, message: str, seconds: float = 0.0) -> Reply:
        return cls("", "", "", "error", error=message, seconds=seconds)


class Backend(Protocol):
    def identity(self) -> dict[str, Any]:
        """What makes its replies what they are (the model, its quantization): part of the config hash."""
        ...

    @property
    def tokenizer(self) -> Tokenizer | None: ...

    def run(self, jobs: Sequence[Job]) -> Iterator[tuple[int, Reply]]:
        """(index into `jobs`, Reply) as each ends; closing the iterator stops what is still running."""
        ...


def split_counts(completion_tokens: int, reasoning: str, text: str, tokenizer: Tokenizer | None) -> tuple[int, int]:
    """(reasoning, answer) token counts of a reply: the reasoning re-encoded when a tokenizer is at hand, else
    its share of the characters."""
    if not reasoning:
        return 0, completion_tokens
    if tokenizer is not None:
        thinking = min(completion_tokens, len(tokenizer.encode(reasoning)))
    else:
        thinking = round(completion_tokens * len(reasoning) / max(1, len(text)))
    return thinking, completion_tokens - thinking


class EngineBackend:
    """Replies from qwq's engine in this process: every pending job on one batching engine, at most
    `concurrency` decoded together. The weights are loaded (`load`) only once there is something to generate,
    so running a finished run again costs no load; until then `plan` (the model built on the meta device, or
    the loaded model itself) answers for the identity and the tokenizer. `dtype` is the one asked for (None:
    the device's default)."""

    def __init__(
        self,
        name: str,
        plan: Model,
        load: Callable[[], Model],
        *,
        quant: str | None = None,
        dtype: str | None = None,
        concurrency: int = 8,
    ) -> None:
        self.name, self.plan, self._load = name, plan, load
        self.quant, self.dtype, self.concurrency = quant, dtype, concurrency
        self.model: Model | None = None

    @classmethod
    def of(cls, model: Model, name: str, concurrency: int = 8) -> EngineBackend:
        """A backend over a model already loaded."""
        dtype = str(model.dtype).removeprefix("torch.")
        return cls(name, model, lambda: model, quant=model.quantization, dtype=dtype, concurrency=concurrency)

    def identity(self) -> dict[str, Any]:
        defaults = dataclasses.asdict(self.plan.generation_defaults)
        defaults.pop("eos_token_ids", None)
        return {
            "backend": "engine",
            "model": self.name,
            "quant": self.quant,
            "dtype": self.dtype,
            "reasoning_format": self.plan.reasoning.style,
            "defaults": defaults,
        }

    @property
    def tokenizer(self) -> Tokenizer | None:
        return self.plan.tokenizer

    def run(self, jobs: Sequence[Job]) -> Iterator[tuple[int, Reply]]:
        if not jobs:
            return
        model = self.model = self.model or self._load()
        requests, indices = [], []
        for index, job in enumerate(jobs):
            try:
                requests.append(model.chat_request(job.messages, model.params(**job.params)))
                indices.append(index)
            except QwqError as exc:  # this sample's fault (a prompt too long): the others still run
                yield index, Reply.failed(str(exc))
        started = time.perf_counter()
        for position, completion in model.complete_batch(requests, self.concurrency):
            yield indices[position], self._reply(completion, time.perf_counter() - started)

    def _reply(self, completion: Completion, seconds: float) -> Reply:
        reasoning, answer = completion.reasoning, completion.answer
        thinking = completion.report.get("thinking", {}).get("tokens")
        if thinking is None:
            thinking, _ = split_counts(completion.token_count, reasoning, reasoning + answer, self.tokenizer)
        thinking = min(thinking, completion.token_count) if reasoning else 0
        return Reply(
            text=reasoning + answer,
            reasoning=reasoning,
            answer=answer,
            finish_reason=completion.finish_reason or "error",
            prompt_tokens=completion.prompt_tokens,
            reasoning_tokens=thinking,
            answer_tokens=completion.token_count - thinking,
            token_ids=list(completion.token_ids),
            seconds=seconds,
            error=completion.error,
            controls=completion.report,
        )


def endpoint_body(model: str, job: Job) -> dict[str, Any]:
    """A job as an OpenAI chat-completions body, qwq's reasoning controls as its extra fields (control_fields.py);
    unset fields are left out, so a server that knows none of them still takes the request."""
    p = job.params
    body: dict[str, Any] = {"model": model, "messages": job.messages, "stream": False}
    for ours, theirs in (
        ("max_new_tokens", "max_tokens"),
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("top_k", "top_k"),
        ("min_p", "min_p"),
        ("seed", "seed"),
        ("max_thinking_tokens", "thinking_token_budget"),
        ("min_thinking_tokens", "min_thinking_tokens"),
        ("max_answer_tokens", "max_answer_tokens"),
    ):
        if p.get(ours) is not None:
            body[theirs] = p[ours]
    if p.get("loop") is not None:
        body["repetition_detection"] = {"action": p["loop"]}
    if p.get("language_guard") is not None:
        body["language_guard"] = {"mode": p["language_guard"], "language": p.get("language")}
    return body


def split_message(message: dict[str, Any], style: str = "think") -> tuple[str, str]:
    """(reasoning, answer) of a reply message: the server's own split (`reasoning_content`, or `reasoning` as
    Ollama and newer vLLM name it), else inline tags split as qwq's engine splits them."""
    content = message.get("content") or ""
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if reasoning:
        return str(reasoning), content
    if style == "none":
        return "", content
    opened = style == "think" and "</think>" in content and "<think>" not in content  # the template opened it
    splitter = ReasoningSplitter(style, starts_in_reasoning=opened)
    first, last = splitter.push(content), splitter.flush()
    return first.reasoning + last.reasoning, first.answer + last.answer


class EndpointBackend:
    """Replies from an OpenAI-compatible server. `url` is the server's base (with or without /v1); `model` the
    name to ask for (default: the first the server lists). Connection failures, timeouts, 429 and 5xx are
    retried `retries` times with exponential backoff from `backoff` seconds (the server's Retry-After
    honoured); a 401/403/404 stops the run; another 4xx fails only its sample."""

    def __init__(
        self,
        url: str,
        model: str | None = None,
        *,
        api_key: str | None = None,
        concurrency: int = 8,
        timeout: float = 3600.0,
        retries: int = 6,
        tokenizer: Tokenizer | None = None,
        reasoning_style: str = "think",
        backoff: float = 1.0,
        client: httpx.Client | None = None,
    ) -> None:
        import httpx

        base = url.rstrip("/")
        self.base = base if base.endswith("/v1") else f"{base}/v1"
        self.concurrency, self.retries, self.backoff = concurrency, retries, backoff
        self._tokenizer, self.reasoning_style = tokenizer, reasoning_style
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        timeouts = httpx.Timeout(timeout, connect=30.0)
        self.client = client or httpx.Client(headers=headers, timeout=timeouts, limits=limits)
        self._stop = threading.Event()
        self.model = model or self._first_model()

    def identity(self) -> dict[str, Any]:
        return {"backend": "endpoint", "model": self.model, "reasoning_format": self.reasoning_style}

    @property
    def tokenizer(self) -> Tokenizer | None:
        return self._tokenizer

    def _first_model(self) -> str:
        listing = self._request("GET", "/models")
        models = [m.get("id") for m in listing.get("data", []) if m.get("id")]
        if not models:
            raise InvalidRequestError(f"{self.base}/models lists no model: pass --model NAME", field="model")
        return models[0]

    def run(self, jobs: Sequence[Job]) -> Iterator[tuple[int, Reply]]:
        """Jobs sent by `concurrency` daemon threads (a Ctrl+C does not wait for requests in flight)."""
        todo: queue.SimpleQueue[tuple[int, Job]] = queue.SimpleQueue()
        done: queue.SimpleQueue[tuple[int, Reply | BaseException]] = queue.SimpleQueue()
        for entry in enumerate(jobs):
            todo.put(entry)
        self._stop.clear()

        def work() -> None:
            while not self._stop.is_set():
                try:
                    index, job = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    done.put((index, self._one(job)))
                except BaseException as exc:  # a misconfigured run: handed to the caller's thread
                    done.put((index, exc))

        for _ in range(min(self.concurrency, len(jobs))):
            threading.Thread(target=work, name="qwq-eval-request", daemon=True).start()
        try:
            for _ in range(len(jobs)):
                index, result = done.get()
                if isinstance(result, BaseException):
                    raise result
                yield index, result
        finally:
            self._stop.set()  # the workers take no new job, and retry waits end at once

    def _one(self, job: Job) -> Reply:
        started = time.perf_counter()
        try:
            data = self._request("POST", "/chat/completions", endpoint_body(self.model, job))
        except _SampleError as exc:
            return Reply.failed(str(exc), time.perf_counter() - started)
        return self._reply(data, time.perf_counter() - started)

    def _reply(self, data: dict[str, Any], seconds: float) -> Reply:
        choices = data.get("choices") or [{}]
        choice, usage = choices[0], data.get("usage") or {}
        reasoning, answer = split_message(choice.get("message") or {}, self.reasoning_style)
        text = reasoning + answer
        completion_tokens = usage.get("completion_tokens")
        if completion_tokens is None:
            completion_tokens = len(self._tokenizer.encode(text)) if self._tokenizer is not None else 0
        details = usage.get("completion_tokens_details") or {}
        if details.get("reasoning_tokens") is not None and reasoning:
            thinking = min(int(details["reasoning_tokens"]), completion_tokens)
        else:
            thinking, _ = split_counts(completion_tokens, reasoning, text, self._tokenizer)
        error = choice.get("error")
        return Reply(
            text=text,
            reasoning=reasoning,
            answer=answer,
            finish_reason=choice.get("finish_reason") or "error",
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            reasoning_tokens=thinking,
            answer_tokens=completion_tokens - thinking,
            seconds=seconds,
            error=error.get("message") if isinstance(error, dict) else error,
            controls=(choice.get("qwq") or {}).get("controls") or {},
        )

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """One call with retries; the JSON answer, or _SampleError (this sample failed), or InvalidRequestError
        (the whole run is misconfigured)."""
        import httpx

        url = f"{self.base}{path}"
        for attempt in range(self.retries + 1):
            delay = min(60.0, self.backoff * 2.0**attempt) * (0.5 + random.random() / 2)  # jittered
            try:
                response = self.client.request(method, url, json=body)
            except httpx.TransportError as exc:  # refused, reset, timed out
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code < 400:
                    try:
                        return response.json()
                    except ValueError:
                        problem = f"HTTP {response.status_code} with a body that is not JSON"
                else:
                    problem = f"HTTP {response.status_code}: {response.text[:300]}"
                    if response.status_code in FATAL_STATUSES:
                        raise InvalidRequestError(f"{url} answered {problem}", field="endpoint")
                    if response.status_code not in RETRY_STATUSES:
                        raise _SampleError(f"{url} answered {problem}")
                    delay = _retry_after(response, delay)
            if attempt == self.retries:
                break
            logger.warning("%s: %s; retrying in %.0f s (%d/%d)", url, problem, delay, attempt + 1, self.retries)
            if self._stop.wait(delay):
                break
        if path == "/models":
            raise InvalidRequestError(f"{url}: {problem}", field="endpoint")
        raise _SampleError(f"{url}: {problem} (gave up after {self.retries} retries)")


class _SampleError(Exception):
    """A request that failed for this sample only; it is logged as finish reason `error` and retried on resume."""


def _retry_after(response: httpx.Response, default: float) -> float:
    try:
        return min(600.0, float(response.headers.get("Retry-After", "")))
    except ValueError:
        return default
