"""A bfloat16 KV cache against a float32 one: the same greedy continuations? and the memory of each.

For each quantization, one loaded model decodes every prompt (chat questions and MATH-500 problems, through the
chat template) greedily for `--new-tokens` tokens with each cache dtype (the model's `kv_cache_dtype` switched
between the runs, so the weights are the same bytes), all prompts batched in one engine; prints how many
continuations are identical and where the others first differ, and the KV cache's bytes per position and at the
model's whole context in both dtypes.

    python benchmarks/kv_cache.py [--model qwen2.5-coder:0.5b] [--quant int4 int8] [--new-tokens 64]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import qwq
from qwq.model.kv_cache import KVCache

CHAT = [
    "What is 7 times 6?",
    "Write a haiku about rust.",
    "Explain TCP in one sentence.",
    "What is a Python list comprehension? Give an example.",
    "List three primary colors and one fact about each.",
    "What is the capital of France, and what river runs through it?",
    "Write a Python function that reverses a string.",
    "What does HTTP stand for, and what is a status code?",
    "Explain recursion to a ten-year-old.",
    "What is the difference between a process and a thread?",
]
MATH500 = Path("/work/shared/data/math500.jsonl")
DTYPES = {"bf16": torch.bfloat16, "f32": torch.float32}


def prompts(model: qwq.Model, math_count: int) -> list[tuple[str, list[int]]]:
    """(label, chat prompt ids): the chat questions, then the first `math_count` MATH-500 problems."""
    with MATH500.open(encoding="utf-8") as handle:
        problems = [json.loads(line)["problem"] for _, line in zip(range(math_count), handle, strict=False)]
    labelled = [(f"chat {i}", q) for i, q in enumerate(CHAT)] + [(f"math500 {i}", p) for i, p in enumerate(problems)]
    template = model.tokenizer.apply_chat_template
    return [
        (label, model.tokenizer.encode(template([{"role": "user", "content": text}], add_generation_prompt=True)))
        for label, text in labelled
    ]


def greedy(model: qwq.Model, ids: list[list[int]], new_tokens: int) -> tuple[list[list[int]], float]:
    """Every prompt's greedy continuation (EOS ignored, so each has `new_tokens`), batched; and the seconds."""
    params = model.params(max_new_tokens=new_tokens, temperature=0, ignore_eos=True)
    requests = [model.request(prompt, params) for prompt in ids]
    outputs: list[list[int]] = [[] for _ in ids]
    start = time.perf_counter()
    for index, completion in model.complete_batch(requests):
        outputs[index] = completion.token_ids
    return outputs, time.perf_counter() - start


def first_difference(a: list[int], b: list[int]) -> int | None:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2.5-coder:0.5b")
    parser.add_argument("--quant", nargs="+", default=["int4", "int8"], choices=["int4", "int8"])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--math", type=int, default=10, help="MATH-500 problems (after the 10 chat questions)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    for quant in args.quant:
        model = qwq.load(args.model, quant=quant)
        labelled = prompts(model, args.math)
        ids = [prompt for _, prompt in labelled]
        runs = {}
        for name, dtype in DTYPES.items():
            model.network.kv_cache_dtype = dtype  # the next engine's cache (complete_batch makes one per call)
            runs[name] = greedy(model, ids, args.new_tokens)
        (bf16, bf16_s), (f32, f32_s) = runs["bf16"], runs["f32"]
        differences = [(label, first_difference(a, b)) for (label, _), a, b in zip(labelled, bf16, f32, strict=True)]
        diverged = [(label, at) for label, at in differences if at is not None]
        config = model.config
        print(f"\n{args.model} {quant}, {len(ids)} prompts x {args.new_tokens} greedy tokens, {args.threads} threads")
        print(f"identical continuations: {len(ids) - len(diverged)}/{len(ids)}")
        for label, at in diverged:
            print(f"  {label}: first differs at new token {at}")
        print(f"batched decode time: bf16 cache {bf16_s:.1f} s, f32 cache {f32_s:.1f} s")
        for name, dtype in DTYPES.items():
            per_position = KVCache.bytes_per_position(config, dtype)
            context = config.max_position_embeddings
            print(
                f"KV cache {name}: {per_position / 1024:.0f} KiB a position; "
                f"{per_position * 8192 / 2**30:.2f} GiB at 8192 positions, {per_position * context / 2**30:.2f} GiB "
                f"at the model's {context}"
            )
        del model


if __name__ == "__main__":
    main()
