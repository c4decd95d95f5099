"""Continuous batching throughput: the same requests one at a time and 8 at once through the engine on its
background thread (as `qwq serve` runs it), in one run; prints aggregate decode tokens/s for each and their
ratio, and checks that every greedy answer is the same both ways.

    python benchmarks/batching.py [--model qwen2.5-coder:0.5b] [--quant int8|int4] [--clients 8] [--new-tokens 32]
"""

from __future__ import annotations

import argparse
import time

import torch

import qwq
from qwq.engine.background import EngineThread, Handle
from qwq.engine.engine import Engine
from qwq.engine.request import GenerationParams

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

CONTEXT = 1024


def chat_prompts(model: qwq.Model, clients: int) -> list[list[int]]:
    """`clients` chat prompts (the questions above, repeated as needed), as token ids."""
    template = model.tokenizer.apply_chat_template
    return [
        model.tokenizer.encode(template([{"role": "user", "content": q}], add_generation_prompt=True))
        for q in (QUESTIONS * clients)[:clients]
    ]


def token_ids(handle: Handle) -> list[int]:
    """A submitted request's output ids, read to its end (an error ends the benchmark)."""
    ids: list[int] = []
    for output in handle.outputs():
        if output.error is not None:
            raise RuntimeError(f"request {output.request_id} failed: {output.error}")
        ids[output.start :] = output.new_ids
    return ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder:0.5b")
    parser.add_argument("--quant", choices=["int8", "int4"])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args()
    model = qwq.load(args.model, quant=args.quant, context_length=CONTEXT)
    prompts = chat_prompts(model, args.clients)
    # every request decodes the full budget (EOS ignored), so both runs do the same work
    params = GenerationParams(max_tokens=args.new_tokens, temperature=0, ignore_eos=True)
    engine = EngineThread(Engine(model.network, model.tokenizer, CONTEXT, max_batch=args.clients))
    try:
        token_ids(engine.submit([model.request(prompts[0], params)])[0])  # warm-up
        started = time.perf_counter()
        alone = [token_ids(engine.submit([model.request(p, params)])[0]) for p in prompts]
        alone_s = time.perf_counter() - started
        started = time.perf_counter()
        handles = engine.submit([model.request(p, params) for p in prompts])
        together = [token_ids(h) for h in handles]
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
