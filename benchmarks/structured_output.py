"""Grammar-constrained decoding's cost per token, on the real 0.5B, side by side in one run: the same prompts,
greedy, decoded unconstrained and with a JSON schema (`response_format`), interleaved; per-token decode time of
each, and the grammar's own share (its processor's mask and its hook's matcher step, timed inside the run).

    python benchmarks/structured_output.py [--quant int4] [--repeats 3] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

import qwq
from qwq.engine.request import Request

SCHEMA = {
    "type": "object",
    "properties": {
        "answer": {"type": "string", "maxLength": 40},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3},
    },
    "required": ["answer", "confidence", "tags"],
    "additionalProperties": False,
}
PROMPTS = [
    "What is the capital of France? Answer in JSON.",
    "Name a prime number larger than 50. Answer in JSON.",
    "Which planet is the largest? Answer in JSON.",
    "What language is spoken in Brazil? Answer in JSON.",
]


def _timed(function: Callable[..., Any], spent: list[float]) -> Callable[..., Any]:
    def wrapper(*args: Any) -> Any:
        start = time.perf_counter()
        try:
            return function(*args)
        finally:
            spent.append(time.perf_counter() - start)

    return wrapper


def _decode(model: qwq.Model, prompt: str, max_tokens: int, structured: bool) -> tuple[int, float, float]:
    """(tokens decoded after the first, their seconds, the grammar's seconds) for one greedy reply."""
    fields = {"response_format": {"type": "json_schema", "json_schema": {"schema": SCHEMA}}} if structured else {}
    messages = [{"role": "user", "content": prompt}]
    request: Request = model.chat_request(messages, model.params(max_tokens=max_tokens, temperature=0, **fields))
    spent: list[float] = []
    if structured:  # the grammar's processor and hook are the last of the chain
        request.processors = (*request.processors[:-1], _timed(request.processors[-1], spent))
        request.hooks = (*request.hooks[:-1], _timed(request.hooks[-1], spent))
    completion = model.complete(request)
    for _ in completion.pieces():
        pass
    stats = completion.stats
    # the first token's mask is paid during the prefill step: only what the decode steps spent is counted
    grammar = sum(spent[2:]) if structured else 0.0
    return stats.generated_tokens - 1, stats.generate_seconds, grammar


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder:0.5b")
    parser.add_argument("--quant", default="int4", help="int4 | int8 | none (float32)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    quant = None if args.quant == "none" else args.quant
    model = qwq.load(args.model, dtype="float32", device="cpu", quant=quant, context_length=1024)
    _decode(model, PROMPTS[0], 8, True)  # warm up: the grammar's token trie is built once per tokenizer
    totals = {False: [0, 0.0, 0.0], True: [0, 0.0, 0.0]}
    per_token: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.repeats):
        for prompt in PROMPTS:
            for structured in (False, True):
                tokens, seconds, grammar = _decode(model, prompt, args.max_tokens, structured)
                for index, value in enumerate((tokens, seconds, grammar)):
                    totals[structured][index] += value
                per_token[structured].append(seconds / max(tokens, 1))
    print(
        f"{platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}, {args.model} "
        f"{args.quant}, {len(PROMPTS)} prompts x {args.repeats}, greedy, max_tokens {args.max_tokens}"
    )
    print("| decoding | tokens | ms/token (all) | ms/token (median reply) | grammar ms/token |")
    print("| --- | --- | --- | --- | --- |")
    for structured in (False, True):
        tokens, seconds, grammar = totals[structured]
        name = "json_schema" if structured else "unconstrained"
        grammar_cell = f"{1e3 * grammar / tokens:.3f}" if structured else "–"
        median = 1e3 * statistics.median(per_token[structured])
        print(f"| {name} | {tokens} | {1e3 * seconds / tokens:.2f} | {median:.2f} | {grammar_cell} |")
    plain, constrained = (totals[s][1] / totals[s][0] for s in (False, True))
    print(f"constrained / unconstrained per token: {constrained / plain:.3f}")


if __name__ == "__main__":
    main()
