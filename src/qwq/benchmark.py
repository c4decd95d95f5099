"""Timing one model's single-stream generation: time to first token, prefill and decode rates, peak memory.

Shared by `qwq bench` and the comparison scripts under `benchmarks/`, so every number is measured the
same way: a fixed-length prompt, greedy decoding with EOS ignored, several repetitions.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from qwq.api import Model
from qwq.engine.request import GenerationParams
from qwq.errors import InvalidRequestError
from qwq.tokenizer.tokenizer import Tokenizer

_FILLER = (
    "def merge_sort(items):\n    if len(items) <= 1:\n        return items\n    middle = len(items) // 2\n"
    "    return merge(merge_sort(items[:middle]), merge_sort(items[middle:]))\n"
    "The quick brown fox jumps over the lazy dog while the compiler checks every branch of the program.\n"
)


@dataclass(frozen=True)
class Summary:
    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: list[float]) -> Summary:
        return cls(statistics.median(values), min(values), max(values))


@dataclass(frozen=True)
class BenchResult:
    prompt_tokens: int
    new_tokens: int
    repeats: int
    time_to_first_token_s: Summary
    prefill_tokens_per_s: Summary
    decode_tokens_per_s: Summary
    peak_rss_gib: float

    def to_dict(self) -> dict:
        return asdict(self)


def proc_status_gib(field: str) -> float | None:
    """A memory field of /proc/self/status (VmRSS, VmHWM, ...) in GiB, or None where there is no procfs."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def read_bandwidth_gbs(threads: int, gib: float = 1.0, reads: int = 5) -> float:
    """This machine's read bandwidth: the fastest of several sums of a `gib`-GiB float32 tensor (a ceiling, as
    noise only slows a read). The decode roofline is this over the bytes of weights read per token; the speed
    here drifts by minutes, so measure it next to what it is compared with."""
    import torch

    torch.set_num_threads(threads)
    data = torch.ones(int(gib * 2**28))
    data.sum()
    fastest = float("inf")
    for _ in range(reads):
        start = time.perf_counter()
        data.sum()
        fastest = min(fastest, time.perf_counter() - start)
    return data.numel() * 4 / fastest / 1e9


def peak_rss_gib() -> float:
    """This process's peak resident memory so far.

    Linux's VmHWM belongs to this process image; ru_maxrss would carry over the peak of whatever forked
    it (it survives fork and exec), so it is only the fallback elsewhere (macOS reports it in bytes)."""
    peak = proc_status_gib("VmHWM")
    if peak is not None:
        return peak
    scale = 2**30 if sys.platform == "darwin" else 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def benchmark_prompt(tokenizer: Tokenizer, length: int) -> list[int]:
    """A prompt of exactly `length` tokens of ordinary code and prose."""
    ids: list[int] = []
    piece = tokenizer.encode(_FILLER)
    while len(ids) < length:
        ids += piece
    return ids[:length]


def run_benchmark(
    model: Model,
    prompt_tokens: int = 512,
    new_tokens: int = 128,
    repeats: int = 3,
    on_step: Callable[[int, int], None] | None = None,
) -> BenchResult:
    """Time `repeats` greedy generations of `new_tokens` after a `prompt_tokens` prompt.

    `on_step(done, total)` is called after every token, for a progress display.
    """
    for name, value in (("prompt_tokens", prompt_tokens), ("new_tokens", new_tokens), ("repeats", repeats)):
        if value < 1:
            raise InvalidRequestError(f"{name} must be at least 1, got {value}")
    if model.tokenizer is None:
        raise InvalidRequestError(f"{model.source} has no tokenizer to build a benchmark prompt with")
    ids = benchmark_prompt(model.tokenizer, prompt_tokens)
    params = GenerationParams(max_tokens=new_tokens + 1, temperature=0.0, ignore_eos=True)
    first_token, prefill, decode = [], [], []
    total = repeats * (new_tokens + 1)
    done = 0
    engine = model.engine(len(ids) + new_tokens + 1)  # its KV cache allocated before the clock starts
    for _ in range(repeats):
        start = time.perf_counter()
        outputs = engine.stream(model.request(ids, params))
        next(outputs)
        first = time.perf_counter()
        done += 1
        for _ in outputs:
            done += 1
            if on_step:
                on_step(done, total)
        end = time.perf_counter()
        first_token.append(first - start)
        prefill.append(prompt_tokens / (first - start))
        decode.append(new_tokens / (end - first))
    return BenchResult(
        prompt_tokens=prompt_tokens,
        new_tokens=new_tokens,
        repeats=repeats,
        time_to_first_token_s=Summary.of(first_token),
        prefill_tokens_per_s=Summary.of(prefill),
        decode_tokens_per_s=Summary.of(decode),
        peak_rss_gib=peak_rss_gib(),
    )
