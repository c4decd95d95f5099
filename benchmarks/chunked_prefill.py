"""A long prompt arriving while a stream decodes: how long does the running stream stall?

One stream decodes (greedy, EOS ignored, on the engine's background thread as `qwq serve` runs it); once it
has produced `--warm-tokens` tokens, a `--long-tokens` prompt is submitted. Prints (a) that prompt's prefill
time alone (the same engine, nothing else running), (b) the running stream's worst inter-token gap while the
long prompt is admitted (the gaps that overlap its submission .. its first token), and their ratio (target:
at most 1/3; the old engine prefilled a prompt in one forward, so its worst gap is about the whole prefill).
With `--before-src` the code before the engine change (`qwq.engine.batching.BatchEngine`) runs too, in
alternating rounds, each version in its own process, and the two are printed side by side.

    python benchmarks/chunked_prefill.py [--before-src /tmp/qwq-before/src] [--long-tokens 5000] [--context 6144]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import threading
import time

from engine_overhead import AFTER_SRC, check_before_src, check_source, worker_env

SHORT_PROMPT = "Write a long story about a robot who learns to paint."


# -- the worker (runs under either version: only stdlib at module level, qwq imported here)
class _Times:
    """The running stream's token arrival times, recorded by its reader thread."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.lock = threading.Condition()
        self.ended = False  # the stream ended (cancelled, or failed: then its reader thread reports why)

    def add(self, count: int) -> None:
        now = time.perf_counter()
        with self.lock:
            self.times += [now] * count
            self.lock.notify_all()

    def read(self, read) -> None:
        try:
            read(self.add)
        finally:
            with self.lock:
                self.ended = True
                self.lock.notify_all()

    def wait_for(self, count: int) -> None:
        with self.lock:
            self.lock.wait_for(lambda: len(self.times) >= count or self.ended)
            if len(self.times) < count:
                raise RuntimeError(f"the running stream ended after {len(self.times)} tokens, before {count}")


def _before_engine(model, args: argparse.Namespace):
    """(submit(ids, max_tokens) -> (read, cancel), close) on the old BatchEngine."""
    from qwq.engine.batching import BatchEngine, BatchRequest
    from qwq.engine.generate import GenerateOptions
    from qwq.engine.sampling import SamplingParams

    engine = BatchEngine(model.network, args.context, max_batch=2)

    def submit(ids: list[int], max_tokens: int):
        options = GenerateOptions(max_new_tokens=max_tokens, sampling=SamplingParams(temperature=0), ignore_eos=True)
        request = engine.submit(BatchRequest(ids, options))

        def read(on_tokens) -> None:
            for _ in request.tokens():
                on_tokens(1)

        return read, request.cancelled.set

    return submit, engine.close


def _after_engine(model, args: argparse.Namespace):
    """(submit(ids, max_tokens) -> (read, cancel), close) on the Engine on its EngineThread."""
    from qwq.engine.background import EngineThread
    from qwq.engine.engine import Engine
    from qwq.engine.request import GenerationParams

    chunk = {"prefill_chunk": args.prefill_chunk} if args.prefill_chunk else {}
    engine = EngineThread(Engine(model.network, model.tokenizer, args.context, max_batch=2, **chunk))

    def submit(ids: list[int], max_tokens: int):
        params = GenerationParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
        handle = engine.submit([model.request(ids, params)])[0]

        def read(on_tokens) -> None:
            for output in handle.outputs():
                if output.error is not None:
                    raise RuntimeError(f"request {output.request_id} failed: {output.error}")
                if output.new_ids:
                    on_tokens(len(output.new_ids))

        return read, handle.cancel

    return submit, engine.close


def _run_to_end(submit, ids: list[int], max_tokens: int) -> float:
    """Seconds from submitting `ids` to its last token."""
    started = time.perf_counter()
    read, _ = submit(ids, max_tokens)
    read(lambda count: None)
    return time.perf_counter() - started


def _worker(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    check_source(args.expect_src)
    import qwq

    if args.worker == "before":
        from qwq.engine.benchmark import benchmark_prompt
    else:
        from qwq.benchmark import benchmark_prompt
    model = qwq.load(
        args.path, device="cpu", quant=args.quant, quant_group_size=args.group_size, context_length=args.context
    )
    tokenizer = model.tokenizer
    short = tokenizer.encode(
        tokenizer.apply_chat_template([{"role": "user", "content": SHORT_PROMPT}], add_generation_prompt=True)
    )
    long = benchmark_prompt(tokenizer, args.long_tokens)
    submit, close = (_before_engine if args.worker == "before" else _after_engine)(model, args)
    try:
        _run_to_end(submit, short, 8)  # warm-up
        alone = _run_to_end(submit, long, 1)  # the long prompt's prefill alone (its first token is its last)

        # the running stream: a budget far past what it needs; it is cancelled once the long prompt is in
        times = _Times()
        read, cancel = submit(short, args.context - len(short))
        reader = threading.Thread(target=times.read, args=(read,), daemon=True)
        reader.start()
        times.wait_for(args.warm_tokens)
        submitted = time.perf_counter()
        loaded = _run_to_end(submit, long, 1)
        first = submitted + loaded
        with times.lock:
            seen = len(times.times)
        times.wait_for(seen + args.after_tokens)
        cancel()
        reader.join()
    finally:
        close()
    t = times.times
    gaps = [(t[i - 1], t[i]) for i in range(1, len(t))]
    steady = [b - a for a, b in gaps if b <= submitted]
    during = [b - a for a, b in gaps if b > submitted and a < first]  # the gaps that overlap the admission
    result = {
        "alone": alone,
        "loaded": loaded,
        "steady_gap": statistics.median(steady),
        "worst_gap": max(during),
        "during_tokens": sum(1 for x in t if submitted < x <= first),
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(result))


# -- the parent
def _run_worker(args: argparse.Namespace, version: str, path: str) -> dict:
    src = args.before_src if version == "before" else str(AFTER_SRC)
    command = [sys.executable, __file__, "--worker", version, "--expect-src", src, "--path", path]
    for flag in (
        "quant", "group_size", "threads", "context", "long_tokens", "warm_tokens", "after_tokens", "prefill_chunk",
    ):  # fmt: skip
        if (value := getattr(args, flag)) is not None:
            command += [f"--{flag.replace('_', '-')}", str(value)]
    run = subprocess.run(command, capture_output=True, text=True, env=worker_env(src))
    if run.returncode != 0:
        raise SystemExit(f"the {version} worker failed:\n{run.stderr.strip()}")
    result = json.loads(run.stdout.strip().splitlines()[-1])
    shown = {k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}
    print(f"  {version:6}: {shown}", file=sys.stderr, flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before-src", help="also run the code before the engine change from this src/ directory")
    parser.add_argument("--model", default="qwen2.5-coder:0.5b")
    parser.add_argument("--quant", default="int4", choices=["int4", "int8"])
    parser.add_argument("--group-size", type=int, default=32, help="int4 group size")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--long-tokens", type=int, default=5000)
    parser.add_argument("--context", type=int, default=6144, help="the loaded context and each engine slot's")
    parser.add_argument("--warm-tokens", type=int, default=16, help="tokens the stream decodes before the prompt")
    parser.add_argument("--after-tokens", type=int, default=4, help="tokens it decodes after the prompt's first")
    parser.add_argument("--prefill-chunk", type=int, help="the new engine's prefill_chunk (default: the engine's)")
    parser.add_argument("--rounds", type=int, default=1, help="before, after, before, after, ...: medians")
    parser.add_argument("--worker", choices=("before", "after"), help=argparse.SUPPRESS)
    parser.add_argument("--expect-src", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args)
        return
    if args.long_tokens + 1 > args.context:
        parser.error(f"--context {args.context} must hold the long prompt ({args.long_tokens}) and a new token")
    versions = ["after"]
    if args.before_src is not None:
        args.before_src = check_before_src(parser, args.before_src)
        versions.insert(0, "before")

    from qwq.local_models import fetch

    path = str(fetch(args.model))
    runs: dict[str, list[dict]] = {v: [] for v in versions}
    for round_index in range(args.rounds):
        print(f"round {round_index + 1}/{args.rounds}", file=sys.stderr)
        for version in versions:
            runs[version].append(_run_worker(args, version, path))
    results = {v: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for v, rs in runs.items()}

    print(
        f"\n{args.model} {args.quant}: a {args.long_tokens}-token prompt submitted while one greedy stream decodes; "
        f"context {args.context}; {args.threads} threads; median of {args.rounds} round(s); {platform.machine()}"
    )
    if args.before_src:
        print(f"before: {args.before_src}")
    print(f"after:  {AFTER_SRC}" + (f" (prefill_chunk {args.prefill_chunk})" if args.prefill_chunk else ""))
    print()
    rows = [
        ("(a) long prompt's prefill alone, s", lambda r: f"{r['alone']:.2f}"),
        ("long prompt's prefill while the stream decodes, s", lambda r: f"{r['loaded']:.2f}"),
        ("stream's median gap before the prompt, ms", lambda r: f"{r['steady_gap'] * 1e3:.1f}"),
        ("(b) stream's worst gap while the prompt is admitted, ms", lambda r: f"{r['worst_gap'] * 1e3:.1f}"),
        ("stream's tokens during the prompt's prefill", lambda r: f"{r['during_tokens']:.0f}"),
        ("worst gap / prefill alone (target <= 0.33)", lambda r: f"{r['worst_gap'] / r['alone']:.3f}"),
    ]
    print("| | " + " | ".join(versions) + " |")
    print("|---" * (len(versions) + 1) + "|")
    for label, cell in rows:
        print(f"| {label} | " + " | ".join(cell(results[v]) for v in versions) + " |")


if __name__ == "__main__":
    main()
