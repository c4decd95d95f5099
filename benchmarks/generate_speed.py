"""Prefill and decode speed of qwq against HF transformers on the same GGUF, measured side by side.

qwq runs dense (float32, bfloat16) and weight-only quantized (int8, int4 group 32; float32 elsewhere).
Each configuration runs in its own process (so peak RSS is its own), one after the other in one run,
with the same prompt length, number of greedy new tokens and thread count. Prints a markdown table with
qwq's ratio to transformers float32.

    python benchmarks/generate_speed.py [--model qwen2.5-coder:0.5b] [--prompt-tokens 512] [--new-tokens 128]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time

CONFIGS = ["transformers-float32", "qwq-float32", "qwq-bfloat16", "qwq-int8", "qwq-int4"]
FILLER = (
    "def merge_sort(items):\n    if len(items) <= 1:\n        return items\n    middle = len(items) // 2\n"
    "    left = merge_sort(items[:middle])\n    right = merge_sort(items[middle:])\n    return merge(left, right)\n"
    "The quick brown fox jumps over the lazy dog while the compiler checks every branch of the program.\n"
)


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _prompt_ids(tokenizer_encode, length: int) -> list[int]:
    ids: list[int] = []
    while len(ids) < length:
        ids += tokenizer_encode(FILLER)
    return ids[:length]


def _run_qwq(path: str, variant: str, prompt_tokens: int, new_tokens: int, repeats: int) -> dict:
    import qwq
    from qwq.engine.generate import GenerateOptions, generate_tokens
    from qwq.engine.sampling import SamplingParams

    quant = variant if variant.startswith("int") else None
    model = qwq.load(path, dtype=None if quant else variant, device="cpu", quant=quant)
    ids = _prompt_ids(model.tokenizer.encode, prompt_tokens)
    options = GenerateOptions(max_new_tokens=new_tokens + 1, sampling=SamplingParams(temperature=0.0), ignore_eos=True)
    prefill, decode = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        tokens = generate_tokens(model.network, ids, options, model.context_length)
        next(tokens)
        first = time.perf_counter()
        count = sum(1 for _ in tokens)
        end = time.perf_counter()
        prefill.append(prompt_tokens / (first - start))
        decode.append(count / (end - first))
    return {"prefill": statistics.median(prefill), "decode": statistics.median(decode), "rss": _peak_rss_gib()}


def _run_transformers(path: str, prompt_tokens: int, new_tokens: int, repeats: int) -> dict:
    from pathlib import Path

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    file = Path(path)
    tokenizer = AutoTokenizer.from_pretrained(file.parent, gguf_file=file.name)
    model = AutoModelForCausalLM.from_pretrained(file.parent, gguf_file=file.name, dtype=torch.float32).eval()
    ids = torch.tensor([_prompt_ids(lambda t: tokenizer.encode(t, add_special_tokens=False), prompt_tokens)])
    prefill, decode = [], []

    def timed(count: int) -> float:
        start = time.perf_counter()
        model.generate(ids, max_new_tokens=count, min_new_tokens=count, do_sample=False, pad_token_id=0)
        return time.perf_counter() - start

    with torch.inference_mode():
        for _ in range(repeats):
            first, total = timed(1), timed(new_tokens + 1)
            prefill.append(prompt_tokens / first)
            decode.append(new_tokens / (total - first))
    return {"prefill": statistics.median(prefill), "decode": statistics.median(decode), "rss": _peak_rss_gib()}


def _worker(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    system, variant = args.worker.split("-")
    if system == "qwq":
        result = _run_qwq(args.path, variant, args.prompt_tokens, args.new_tokens, args.repeats)
    else:
        result = _run_transformers(args.path, args.prompt_tokens, args.new_tokens, args.repeats)
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2.5-coder:0.5b")
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args)
        return

    from qwq.local_models import fetch

    path = str(fetch(args.model))
    results = {}
    for config in CONFIGS:
        command = [sys.executable, __file__, "--worker", config, "--path", path]
        for flag in ("prompt_tokens", "new_tokens", "threads", "repeats"):
            command += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        results[config] = json.loads(output.strip().splitlines()[-1])
        print(f"measured {config}: {results[config]}", file=sys.stderr)

    base = results["transformers-float32"]
    print(
        f"\n{args.model}, {args.prompt_tokens}-token prompt, {args.new_tokens} greedy new tokens, "
        f"{args.threads} threads, median of {args.repeats}; {platform.processor() or platform.machine()}\n"
    )
    print("| system | prefill tok/s | decode tok/s | peak RSS GiB | prefill × HF fp32 | decode × HF fp32 |")
    print("|---|---|---|---|---|---|")
    for config, r in results.items():
        print(
            f"| {config} | {r['prefill']:.1f} | {r['decode']:.2f} | {r['rss']:.2f} | "
            f"{r['prefill'] / base['prefill']:.2f} | {r['decode'] / base['decode']:.2f} |"
        )


if __name__ == "__main__":
    main()
