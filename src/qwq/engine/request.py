"""The one request type: what a caller asks of one generation, typed, checked and merged with the checkpoint's
defaults in one place.

Every front end (OpenAI and Ollama routes, CLI flags and `/set`, the Python API) translates its own dialect into
`GenerationParams`; the engine runs `Request`s that hold resolved params. A field left as None takes the
checkpoint's default in `GenerationParams.resolved`, the only place defaults are merged.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from qwq.config import GenerationDefaults
from qwq.engine.structured import StructuredOutput
from qwq.errors import ContextLengthError, InvalidRequestError

if TYPE_CHECKING:
    import torch

GREEDY_BELOW = 1e-5  # temperatures under this sample greedily (as vLLM does): 1/T would overflow the logits
SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed takes

# what a finish reason says: the stop token or a stop string; the token budget; the caller went away; a failure
# inside generation; and the reasons the reasoning controls set
FINISH_REASONS = ("stop", "length", "abort", "error", "loop", "budget", "content_filter")

# The first argument of both is the engine's `SequenceState` (sequence.py, which builds on this module).
LogitsProcessor = Callable[[Any, "torch.Tensor"], "torch.Tensor"]
"""(sequence, logits (V,) float32) -> logits; runs before sampling, in the order given."""

TokenHook = Callable[[Any, int], None]
"""Called after each sampled token joins a sequence; may `force`, `rollback` or `finish` it."""


LOOP_ACTIONS = ("recover", "stop", "off")
LANGUAGE_MODES = ("off", "warn", "enforce")
LANGUAGE_SCOPES = ("reasoning", "answer", "both")


def _choice(name: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise InvalidRequestError(f"{name} must be one of {', '.join(choices)}; got {value!r}", field=name)


@dataclass(frozen=True)
class LanguageParams:
    """The language guard: off, warn (report the share of letters in other scripts) or enforce (mask tokens
    of other scripts), over the reasoning, the answer or both. language: an ISO code ("en", "zh"); None takes
    the script of the user's last message."""

    mode: str = "off"
    language: str | None = None
    scope: str = "both"

    def __post_init__(self) -> None:
        _choice("language_guard.mode", self.mode, LANGUAGE_MODES)
        _choice("language_guard.scope", self.scope, LANGUAGE_SCOPES)
        if self.language is not None and (not isinstance(self.language, str) or not self.language.strip()):
            raise InvalidRequestError(
                f"language_guard.language must be a language code such as 'en', got {self.language!r}",
                field="language_guard.language",
            )


@dataclass(frozen=True)
class ReasoningParams:
    """The reasoning controls of one request (reasoning/controls.py runs them).

    split: the reasoning reported apart from the answer (OpenAI's `reasoning_content`, Ollama's `think`) or
    inline. loop: what a detected loop does — "recover" (cut the repeats, cue the answer), "stop" (cut them
    and end with finish reason `loop`) or "off"; None is "recover" for a model that reasons, else "off".
    max_thinking_tokens: the reasoning's budget (the answer is cued when it is reached); min_thinking_tokens:
    an early close of the reasoning is replaced by "Wait"; max_answer_tokens: the answer's own budget once a
    control has cued it (None: DEFAULT_ANSWER_TOKENS). guard: run the server's safety guard (None: the
    server's choice)."""

    split: bool = True
    loop: str | None = None
    max_thinking_tokens: int | None = None
    min_thinking_tokens: int | None = None
    max_answer_tokens: int | None = None
    language: LanguageParams = field(default_factory=LanguageParams)
    guard: bool | None = None

    def __post_init__(self) -> None:
        if self.loop is not None:
            _choice("repetition_detection.action", self.loop, LOOP_ACTIONS)
        for name in ("max_thinking_tokens", "min_thinking_tokens", "max_answer_tokens"):
            if (value := getattr(self, name)) is not None:
                _integer(name, value, 1 if name != "min_thinking_tokens" else 0)
        low, high = self.min_thinking_tokens, self.max_thinking_tokens
        if low is not None and high is not None and low > high:
            raise InvalidRequestError(
                f"min_thinking_tokens ({low}) must not exceed max_thinking_tokens ({high})",
                field="min_thinking_tokens",
            )

    def merged(self, **changes: Any) -> ReasoningParams:
        """These controls with `changes` applied (None values ignored), checked again."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


def _number(name: str, value: Any, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidRequestError(f"{name} must be a finite number, got {value!r}", field=name)
    if not low <= value <= high:
        raise InvalidRequestError(f"{name} must be a number in [{low}, {high}], got {value!r}", field=name)


def _integer(name: str, value: Any, low: int, high: float = math.inf) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        bound = f"at least {low}" if high == math.inf else f"in [{low}, {high}]"
        raise InvalidRequestError(f"{name} must be an integer {bound}, got {value!r}", field=name)


@dataclass(frozen=True)
class GenerationParams:
    """Per-request parameters. temperature 0 is greedy; top_k 0, top_p 1 and min_p 0 switch those filters off;
    the repetition penalty is HF's (over prompt and output), presence/frequency are OpenAI's (output only).
    max_tokens None fills the rest of the context; context_length (Ollama's num_ctx) caps this request's
    context below the loaded one; stop_token_ids None means the checkpoint's EOS ids; logprobs None reports
    none, 0 the chosen token's, k also the k most likely alternatives."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] | None = None
    ignore_eos: bool = False
    logprobs: int | None = None
    context_length: int | None = None
    reasoning: ReasoningParams = field(default_factory=ReasoningParams)
    structured: StructuredOutput | None = None

    def __post_init__(self) -> None:
        checks = (
            ("temperature", 0.0, math.inf),
            ("top_p", 0.0, 1.0),
            ("min_p", 0.0, 1.0),
            ("repetition_penalty", 1e-6, math.inf),
            ("presence_penalty", -2.0, 2.0),
            ("frequency_penalty", -2.0, 2.0),
        )
        for name, low, high in checks:
            if (value := getattr(self, name)) is not None:
                _number(name, value, low, high)
        if self.top_p == 0.0:
            raise InvalidRequestError("top_p must be greater than 0", field="top_p")
        for name, low in (("top_k", 0), ("max_tokens", 1), ("logprobs", 0), ("context_length", 1)):
            if (value := getattr(self, name)) is not None:
                _integer(name, value, low)
        if self.seed is not None:
            _integer("seed", self.seed, *SEED_RANGE)
        if isinstance(self.stop, str) or any(not isinstance(s, str) for s in self.stop):
            raise InvalidRequestError(f"stop must be a list of strings, got {self.stop!r}", field="stop")
        if self.stop_token_ids is not None:
            for token in self.stop_token_ids:
                _integer("stop_token_ids", token, 0)
        if self.structured is not None and not isinstance(self.structured, StructuredOutput):
            raise InvalidRequestError(
                f"structured must be a StructuredOutput, got {self.structured!r}", field="structured"
            )

    @classmethod
    def of(cls, **fields: Any) -> GenerationParams:
        """Built from keyword fields, None values dropped, a single stop string taken as a list: what each
        dialect's translation calls. Unknown names are refused by name."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise InvalidRequestError(f"unknown generation parameters: {unknown}; known: {sorted(known)}")
        chosen = {k: v for k, v in fields.items() if v is not None}
        stop = chosen.get("stop", ())
        if isinstance(stop, str):
            stop = (stop,)
        elif not isinstance(stop, (list, tuple)):
            raise InvalidRequestError(f"stop must be a string or a list of strings, got {stop!r}")
        chosen["stop"] = tuple(stop)
        if "stop_token_ids" in chosen:
            chosen["stop_token_ids"] = tuple(chosen["stop_token_ids"])
        return cls(**chosen)

    def merged(self, **changes: Any) -> GenerationParams:
        """These params with `changes` applied (None values ignored), checked again."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def resolved(self, defaults: GenerationDefaults, prompt_length: int, loaded_context: int) -> GenerationParams:
        """Every unset field filled from the checkpoint's defaults; the budget checked against the context."""
        context = loaded_context
        if self.context_length is not None:
            if self.context_length > loaded_context:
                raise ContextLengthError(
                    f"context_length {self.context_length} exceeds the loaded context of {loaded_context} tokens "
                    "(load the model with a larger context: --ctx)",
                    field="context_length",
                )
            context = self.context_length
        room = context - prompt_length
        if room < 1:
            raise ContextLengthError(
                f"the prompt ({prompt_length} tokens) leaves no room in the context of {context} tokens",
                field="prompt",
            )
        if self.max_tokens is not None and self.max_tokens > room:
            raise ContextLengthError(
                f"the prompt ({prompt_length} tokens) + max_tokens ({self.max_tokens}) = "
                f"{prompt_length + self.max_tokens} exceeds the context of {context} tokens",
                field="max_tokens",
            )
        filled = {
            "temperature": defaults.temperature,
            "top_k": defaults.top_k,
            "top_p": defaults.top_p,
            "min_p": defaults.min_p,
            "repetition_penalty": defaults.repetition_penalty,
            "presence_penalty": 0.0,
            "frequency_penalty": 0.0,
            "stop_token_ids": tuple(defaults.eos_token_ids),
            "max_tokens": room,
            "context_length": context,
        }
        return dataclasses.replace(self, **{k: v for k, v in filled.items() if getattr(self, k) is None})

    @property
    def greedy(self) -> bool:
        return self.temperature is not None and self.temperature < GREEDY_BELOW

    @property
    def penalised(self) -> bool:
        return self.repetition_penalty not in (None, 1.0) or bool(self.presence_penalty) or bool(self.frequency_penalty)

    @property
    def end_ids(self) -> frozenset[int]:
        """The token ids that end the reply (none with ignore_eos)."""
        return frozenset() if self.ignore_eos else frozenset(self.stop_token_ids or ())


_request_ids = itertools.count(1)


@dataclass
class Request:
    """One generation the engine runs: prompt ids and resolved params, plus the hooks that act inside the
    loop (extra logits processors after the penalties; token hooks after each token)."""

    prompt_ids: list[int]
    params: GenerationParams
    processors: tuple[LogitsProcessor, ...] = ()
    hooks: tuple[TokenHook, ...] = ()
    request_id: int = field(default_factory=lambda: next(_request_ids))
    controls: Any = None  # the reasoning controls acting through `processors` and `hooks`: they report at the end


def check_prompt(prompt_ids: Sequence[int], vocab_size: int) -> list[int]:
    """The prompt as a list of ints, or an error naming why the model cannot take it."""
    try:
        ids = [operator.index(i) for i in prompt_ids]  # ints, numpy ints and 0-d integer tensors
    except TypeError:
        raise InvalidRequestError(
            f"prompt token ids must be integers, got {list(prompt_ids)[:5]!r}", field="prompt"
        ) from None
    if not ids:
        raise InvalidRequestError("the prompt is empty: give at least one token", field="prompt")
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise InvalidRequestError(f"prompt token ids out of range [0, {vocab_size}): {bad[:5]}", field="prompt")
    return ids
