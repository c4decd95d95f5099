"""Single-stream generation: prefill, then decode token by token with the KV cache.

Three layers, as in mlx-lm: `generate_tokens` yields ids, `TextStream` turns them into UTF-8-safe text
pieces with stop strings applied, and the `Model` API wraps both into plain calls. This path serves the
CLI, the eval harness and the tests.
"""

from __future__ import annotations

import operator
import time
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from qwq.engine.detokenizer import IncrementalDetokenizer
from qwq.engine.sampling import SamplingParams, apply_penalties, needs_penalties, sample
from qwq.engine.stop_strings import StopStringMatcher
from qwq.errors import ContextLengthError, InvalidRequestError
from qwq.model.qwen2 import Qwen2ForCausalLM
from qwq.tokenizer.tokenizer import Tokenizer


@dataclass(frozen=True)
class GenerateOptions:
    max_new_tokens: int
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop_token_ids: tuple[int, ...] = ()
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise InvalidRequestError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")
        if any(not isinstance(s, str) for s in self.stop):
            raise InvalidRequestError(f"stop must be a list of strings, got {list(self.stop)!r}")


def check_prompt(prompt_ids: Sequence[int], max_new_tokens: int, vocab_size: int, context_length: int) -> list[int]:
    """The prompt as a list of ints, or an error naming why the model cannot take it."""
    try:
        ids = [operator.index(i) for i in prompt_ids]  # ints, numpy ints and 0-d integer tensors
    except TypeError:
        raise InvalidRequestError(f"prompt token ids must be integers, got {list(prompt_ids)[:5]!r}") from None
    if not ids:
        raise InvalidRequestError("the prompt is empty: give at least one token")
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise InvalidRequestError(f"prompt token ids out of range [0, {vocab_size}): {bad[:5]}")
    if len(ids) + max_new_tokens > context_length:
        raise ContextLengthError(
            f"prompt ({len(ids)} tokens) + max_new_tokens ({max_new_tokens}) = "
            f"{len(ids) + max_new_tokens} exceeds the context length of {context_length} tokens"
        )
    return ids


def generate_tokens(
    model: Qwen2ForCausalLM, prompt_ids: Sequence[int], options: GenerateOptions, context_length: int
) -> Generator[int, None, None]:
    """New token ids, lazily; the stop token that ends generation is yielded too (as HF's generate does).

    The prompt is checked now, so a bad request fails at the call rather than at the first token.
    """
    ids = check_prompt(prompt_ids, options.max_new_tokens, model.config.vocab_size, context_length)
    return _decode(model, ids, options)


@torch.inference_mode()
def _decode(model: Qwen2ForCausalLM, prompt_ids: list[int], options: GenerateOptions) -> Generator[int, None, None]:
    config = model.config
    device = model.model.embed_tokens.weight.device
    params = options.sampling
    generator = params.make_generator(device)
    stop_ids = set() if options.ignore_eos else set(options.stop_token_ids)
    penalise = needs_penalties(params)
    if penalise:
        seen = torch.zeros(config.vocab_size, dtype=torch.bool, device=device)
        seen[torch.tensor(prompt_ids, device=device)] = True
        output_counts = torch.zeros(config.vocab_size, dtype=torch.int32, device=device)

    model.setup_cache(1, len(prompt_ids) + options.max_new_tokens)
    logits = model(torch.tensor([prompt_ids], device=device), 0, last_only=True)[0, -1].float()
    position = len(prompt_ids)
    for step in range(options.max_new_tokens):
        if penalise:
            logits = apply_penalties(logits, params, seen, output_counts)
        token = sample(logits, params, generator)
        yield token
        if token in stop_ids or step == options.max_new_tokens - 1:
            return
        if penalise:
            seen[token] = True
            output_counts[token] += 1
        next_input = torch.tensor([[token]], device=device)
        logits = model(next_input, position, last_only=True)[0, -1].float()
        position += 1


@dataclass(frozen=True)
class GenerationStats:
    """Counts and durations in ollama's terms: the prompt's evaluation (prefill, up to the first new token)
    and the evaluation of the new tokens; the rate counts the tokens decoded after the first."""

    prompt_tokens: int
    prompt_seconds: float
    generated_tokens: int
    generate_seconds: float

    @property
    def prompt_rate(self) -> float:
        return self.prompt_tokens / self.prompt_seconds if self.prompt_seconds > 0 else 0.0

    @property
    def generate_rate(self) -> float:
        return (self.generated_tokens - 1) / self.generate_seconds if self.generate_seconds > 0 else 0.0


class TextStream:
    """Iterates the text pieces of a generation; `finish_reason`, `token_ids` and `stats` are set as it runs.

    finish_reason is "stop" (a stop token or stop string) or "length" (max_new_tokens reached).
    """

    def __init__(
        self,
        tokens: Generator[int, None, None],
        tokenizer: Tokenizer,
        options: GenerateOptions,
        prompt_tokens: int = 0,
    ) -> None:
        self._tokens = tokens
        self._detokenizer = IncrementalDetokenizer(tokenizer, skip_special_tokens=True)
        self._stops = StopStringMatcher(options.stop)
        self._stop_ids = set() if options.ignore_eos else set(options.stop_token_ids)
        self.prompt_tokens = prompt_tokens
        self.token_ids: list[int] = []
        self.finish_reason: str | None = None
        self._started = self._first_token = self._last_token = 0.0  # perf_counter times

    @property
    def stats(self) -> GenerationStats:
        """The timings so far; the first new token's time counts toward the prompt, as ollama counts it."""
        return GenerationStats(
            prompt_tokens=self.prompt_tokens,
            prompt_seconds=self._first_token - self._started,
            generated_tokens=len(self.token_ids),
            generate_seconds=self._last_token - self._first_token,
        )

    def __iter__(self) -> Iterator[str]:
        finish = "length"
        self._started = time.perf_counter()
        for token in self._tokens:
            self._last_token = time.perf_counter()
            if not self.token_ids:
                self._first_token = self._last_token
            self.token_ids.append(token)
            if token in self._stop_ids:
                finish = "stop"
                break
            piece = self._stops.push(self._detokenizer.push(token))
            if piece:
                yield piece
            if self._stops.stopped:
                finish = "stop"
                break
        self._tokens.close()
        if not self._stops.stopped:
            tail = self._stops.push(self._detokenizer.flush())
            finish = "stop" if self._stops.stopped else finish
            tail += self._stops.flush()
            if tail:
                yield tail
        self.finish_reason = finish
