"""Speculative decoding by prompt lookup, on and off, in one run: a code-rewrite prompt set (HumanEval functions
to restate with a small change: the reply largely copies the given code) and open-ended prompts. Prints decode
tokens/s both ways, their ratio, the share of drafted tokens kept, and checks the greedy outputs are the same.

    python benchmarks/speculative.py [--model qwen2.5-coder:0.5b] [--quant int4] [--prompts 6] [--new-tokens 160]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import qwq
from qwq.engine.engine import Engine

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
OPEN_ENDED = [
    "Write a short story about a lighthouse keeper who finds a map.",
    "Explain how a hash map works, with an analogy.",
    "What are the pros and cons of remote work? Answer in a few paragraphs.",
    "Describe a walk through a forest in autumn.",
    "Give advice to someone learning to cook.",
    "Why is the sky blue? Explain for a child.",
]


def rewrite_prompts(count: int) -> list[str]:
    prompts = []
    with open(DATA / "humaneval.jsonl") as lines:
        for line in lines:
            task = json.loads(line)
            code = task["prompt"] + task["canonical_solution"]
            prompts.append(
                f"Add type hints to every function below and return the whole code, unchanged otherwise.\n\n{code}"
            )
            if len(prompts) == count:
                break
    return prompts


def decode(
    model: qwq.Model, prompts: list[str], speculative: bool, new_tokens: int
) -> tuple[list[list[int]], float, Engine]:
    """Greedy replies and the decode tokens/s (time from each first token to its last)."""
    engine = Engine(model.network, model.tokenizer, model.context_length, speculative=speculative)
    replies, tokens, seconds = [], 0, 0.0
    for text in prompts:
        ids = model.tokenizer.encode(
            model.tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
        )
        request = model.request(ids, model.params(max_tokens=new_tokens, temperature=0))
        first, reply = None, []
        for output in engine.stream(request):
            if first is None and output.new_ids:
                first = time.perf_counter()
                start_count = len(output.new_ids)
            reply[output.start :] = output.new_ids
        seconds += time.perf_counter() - first
        tokens += len(reply) - start_count
        replies.append(reply)
    return replies, tokens / seconds, engine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder:0.5b")
    parser.add_argument("--quant", default="int4", choices=["int8", "int4"])
    parser.add_argument("--prompts", type=int, default=6)
    parser.add_argument("--new-tokens", type=int, default=160)
    args = parser.parse_args()
    model = qwq.load(args.model, quant=args.quant, context_length=2048)
    print(f"model {args.model} quant {args.quant} threads {torch.get_num_threads()} {args.new_tokens} new tokens")
    decode(model, OPEN_ENDED[:1], False, 8)  # warm-up
    for name, prompts in (("code rewrite", rewrite_prompts(args.prompts)), ("open-ended", OPEN_ENDED[: args.prompts])):
        plain, plain_rate, _ = decode(model, prompts, False, args.new_tokens)
        drafted, rate, engine = decode(model, prompts, True, args.new_tokens)
        kept = engine.kept_tokens / max(1, engine.drafted_tokens)
        same = sum(a == b for a, b in zip(plain, drafted, strict=True))
        print(
            f"{name:>12}: plain {plain_rate:.1f} tok/s, speculative {rate:.1f} tok/s, ratio {rate / plain_rate:.2f}x; "
            f"drafted {engine.drafted_tokens} kept {kept:.0%}; identical {same}/{len(prompts)}"
        )


if __name__ == "__main__":
    main()
