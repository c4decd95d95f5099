"""Continuous batching throughput: the same requests one at a time and 8 at once through the batching
engine, in one run; prints aggregate decode tokens/s for each and their ratio, and checks that every
greedy answer is the same both ways.

    python benchmarks/batching.py [--model qwen2.5-coder:0.5b] [--quant int8|int4] [--clients 8] [--new-tokens 32]
"""

from __future__ import annotations

import argparse
import time

import torch

import qwq
from qwq.engine.batching import BatchEngine, BatchRequest
from qwq.engine.generate import GenerateOptions
from qwq.engine.sampling import SamplingParams

QUESTIONS = [
    "What is 7 times 6?",
    "Write a haiku about rust.",
    "Explain TCP in one sentence.",
    "What is a Python list?",
    "List three colors.",
    "What is the capital of France?",
    "Translate 'cat' to French.",
    "What does HTTP stand for?",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder:0.5b")
    parser.add_argument("--quant", choices=["int8", "int4"])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args()
    model = qwq.load(args.model, quant=args.quant, context_length=1024)
    template = model.tokenizer.apply_chat_template
    prompts = [
        model.tokenizer.encode(template([{"role": "user", "content": q}], add_generation_prompt=True))
        for q in (QUESTIONS * args.clients)[: args.clients]
    ]
    options = GenerateOptions(
        max_new_tokens=args.new_tokens,
        sampling=SamplingParams(temperature=0),
        stop_token_ids=model.generation_defaults.eos_token_ids,
        ignore_eos=True,  # every request decodes the full budget, so both runs do the same work
    )
    engine = BatchEngine(model.network, 1024, max_batch=args.clients)
    try:
        engine.submit(BatchRequest(prompts[0], options)).events.get()  # warm-up
        started = time.perf_counter()
        alone = [[e.token for e in engine.submit(BatchRequest(p, options)).tokens()] for p in prompts]
        alone_s = time.perf_counter() - started
        started = time.perf_counter()
        requests = [engine.submit(BatchRequest(p, options)) for p in prompts]
        together = [[e.token for e in r.tokens()] for r in requests]
        together_s = time.perf_counter() - started
    finally:
        engine.close()
    tokens = sum(map(len, together))
    same = sum(a == b for a, b in zip(alone, together, strict=True))
    print(
        f"model {args.model} quant {args.quant or 'none'} threads {torch.get_num_threads()} "
        f"{args.clients} requests x {args.new_tokens} tokens"
    )
    print(f"one at a time: {tokens / alone_s:6.1f} tok/s ({alone_s:.1f} s)")
    print(f"{args.clients} together:   {tokens / together_s:6.1f} tok/s ({together_s:.1f} s)")
    print(f"ratio {alone_s / together_s:.2f}x; identical greedy outputs {same}/{len(prompts)}")


if __name__ == "__main__":
    main()
