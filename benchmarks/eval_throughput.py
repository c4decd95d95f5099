"""`qwq eval` in-process throughput: the same MATH-500 items run one sample at a time (--concurrency 1) and
batched (--concurrency 8) through the eval runner on one loaded model, in one run; prints generated tokens/s
for each, their ratio, and whether every reply and verdict is the same both ways (greedy).

    python benchmarks/eval_throughput.py [--model qwen2.5-coder:0.5b] [--quant int4] [--limit 8] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import qwq
from qwq.eval.backends import EngineBackend
from qwq.eval.benchmarks.registry import load_dataset
from qwq.eval.jsonl import read_records
from qwq.eval.runner import RunSettings, run_eval

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _run(model: qwq.Model, name: str, dataset, concurrency: int, max_tokens: int) -> tuple[float, list[dict]]:
    backend = EngineBackend.of(model, name, concurrency=concurrency)
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        run_eval(dataset, backend, RunSettings(temperature=0, max_tokens=max_tokens), Path(out))
        seconds = time.perf_counter() - started
        records = sorted(read_records(Path(out) / "samples.jsonl"), key=lambda r: r["item"])
    return seconds, records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder:0.5b")
    parser.add_argument("--quant", choices=["int8", "int4"])
    parser.add_argument("--limit", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--data-dir", type=Path, default=DATA)
    args = parser.parse_args()
    model = qwq.load(args.model, quant=args.quant, context_length=2048)
    full = load_dataset("math500", data_dir=args.data_dir)
    dataset = dataclasses.replace(full, items=full.items[: args.limit])
    print(f"{args.model} {args.quant or 'float32'}: MATH-500 x {args.limit}, {args.max_tokens} new tokens at most")
    results = {}
    for concurrency in (1, 8):
        seconds, records = _run(model, args.model, dataset, concurrency, args.max_tokens)
        tokens = sum(r["reasoning_tokens"] + r["answer_tokens"] for r in records)
        results[concurrency] = (seconds, tokens, records)
        print(f"  concurrency {concurrency}: {tokens} tokens in {seconds:.1f} s = {tokens / seconds:.1f} tok/s")
    (one_s, one_t, one_r), (eight_s, eight_t, eight_r) = results[1], results[8]
    same = [a["reply"] == b["reply"] and a["correct"] == b["correct"] for a, b in zip(one_r, eight_r, strict=True)]
    print(
        f"  batched / one at a time: {(eight_t / eight_s) / (one_t / one_s):.2f}x tok/s; same replies and verdicts "
        f"{sum(same)}/{len(same)}"
    )


if __name__ == "__main__":
    main()
