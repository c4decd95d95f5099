"""The engine change's "no slowdown" check in one run: the code before it and the code now, side by side.

Each round runs, for each quantization, a worker process on the old code (PYTHONPATH=--before-src: the old
`qwq.engine.benchmark.run_benchmark` and `qwq.engine.batching.BatchEngine`) and then one on this checkout's
code (`qwq.benchmark.run_benchmark` and `qwq.engine.engine.Engine` on an `EngineThread`), so the two versions
never share an interpreter and the machine's drift is spread over both. Each worker measures:

- single stream: a `--prompt-tokens` prompt and `--new-tokens` greedy new tokens (EOS ignored), median of
  `--repeats` runs after one warm-up: prefill tok/s (prompt / time to first token) and decode tok/s;
- batched: `--clients` different chat prompts submitted together, `--batch-new-tokens` greedy tokens each
  (EOS ignored), on the background engine as the server runs it: aggregate tok/s, each prefill included;
  and the greedy outputs, which must be the same before and after.

It prints the median of the rounds for each, and after / before (1.00 or more: no slowdown). The model is
loaded with a context of prompt + new tokens + 1 (`--context`), which is what the old single-stream path sized
its KV cache to; the new engine sizes its cache to the loaded context.

    git worktree add /tmp/qwq-before HEAD   # the code before the change (here: the last commit)
    python benchmarks/engine_overhead.py --before-src /tmp/qwq-before/src [--rounds 3] [--quants int4 int8]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

AFTER_SRC = Path(__file__).resolve().parents[1] / "src"
BATCH_CONTEXT = 1024  # the batched engine's context (both versions), as benchmarks/batching.py uses
VERSIONS = ("before", "after")

QUESTIONS = [  # as benchmarks/batching.py asks them
    "What is 7 times 6?",
    "Write a haiku about rust.",
    "Explain TCP in one sentence.",
    "What is a Python list?",
    "List three colors.",
    "What is the capital of France?",
    "Translate 'cat' to French.",
    "What does HTTP stand for?",
]

# (key, label, format); every one is a rate or a size where after / before is the ratio to read
METRICS = [
    ("prefill", "single-stream prefill tok/s", "{:.1f}"),
    ("decode", "single-stream decode tok/s", "{:.2f}"),
    ("ttft", "single-stream time to first token s", "{:.3f}"),
    ("batch", "{clients}-client aggregate tok/s", "{:.1f}"),
    ("rss", "peak RSS GiB (after the single stream)", "{:.2f}"),
]


# -- the worker (runs under either version: only stdlib at module level, qwq imported here)
def check_source(expected: str) -> None:
    import qwq

    where = Path(qwq.__file__).resolve()
    if not where.is_relative_to(Path(expected).resolve()):
        raise SystemExit(f"the worker imported qwq from {where}, not from {expected}: check PYTHONPATH")


def _single_before(model, args: argparse.Namespace) -> dict:
    from qwq.engine.benchmark import run_benchmark

    run_benchmark(model, args.prompt_tokens, 1, 1)  # warm-up: every measured repeat runs warm
    return run_benchmark(model, args.prompt_tokens, args.new_tokens, args.repeats).to_dict()


def _single_after(model, args: argparse.Namespace) -> dict:
    from qwq.benchmark import run_benchmark

    run_benchmark(model, args.prompt_tokens, 1, 1)  # warm-up: every measured repeat runs warm
    return run_benchmark(model, args.prompt_tokens, args.new_tokens, args.repeats).to_dict()


def _batch_before(model, prompts: list[list[int]], args: argparse.Namespace) -> tuple[float, list[list[int]]]:
    from qwq.engine.batching import BatchEngine, BatchRequest
    from qwq.engine.generate import GenerateOptions
    from qwq.engine.sampling import SamplingParams

    options = GenerateOptions(
        max_new_tokens=args.batch_new_tokens,
        sampling=SamplingParams(temperature=0),
        stop_token_ids=model.generation_defaults.eos_token_ids,
        ignore_eos=True,
    )
    engine = BatchEngine(model.network, BATCH_CONTEXT, max_batch=args.clients)
    try:
        list(engine.submit(BatchRequest(prompts[0], options)).tokens())  # warm-up, to its end
        started = time.perf_counter()
        requests = [engine.submit(BatchRequest(p, options)) for p in prompts]
        outputs = [[e.token for e in r.tokens()] for r in requests]
        seconds = time.perf_counter() - started
    finally:
        engine.close()
    return seconds, outputs


def _batch_after(model, prompts: list[list[int]], args: argparse.Namespace) -> tuple[float, list[list[int]]]:
    from qwq.engine.background import EngineThread
    from qwq.engine.engine import Engine
    from qwq.engine.request import GenerationParams

    params = GenerationParams(max_tokens=args.batch_new_tokens, temperature=0, ignore_eos=True)

    def ids(handle) -> list[int]:
        out: list[int] = []
        for output in handle.outputs():
            if output.error is not None:
                raise RuntimeError(f"request {output.request_id} failed: {output.error}")
            out[output.start :] = output.new_ids
        return out

    engine = EngineThread(Engine(model.network, model.tokenizer, BATCH_CONTEXT, max_batch=args.clients))
    try:
        ids(engine.submit([model.request(prompts[0], params)])[0])  # warm-up, to its end
        started = time.perf_counter()
        handles = engine.submit([model.request(p, params) for p in prompts])
        outputs = [ids(h) for h in handles]
        seconds = time.perf_counter() - started
    finally:
        engine.close()
    return seconds, outputs


def _worker(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    check_source(args.expect_src)
    import qwq

    model = qwq.load(
        args.path, device="cpu", quant=args.quant, quant_group_size=args.group_size, context_length=args.context
    )
    single = (_single_before if args.worker == "before" else _single_after)(model, args)
    prompts = json.loads(Path(args.prompt_file).read_text())
    batch = _batch_before if args.worker == "before" else _batch_after
    seconds, outputs = batch(model, prompts, args)
    result = {
        "prefill": single["prefill_tokens_per_s"]["median"],
        "decode": single["decode_tokens_per_s"]["median"],
        "ttft": single["time_to_first_token_s"]["median"],
        "rss": single["peak_rss_gib"],
        "batch": sum(map(len, outputs)) / seconds,
        "outputs": outputs,
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(result))


# -- the parent (this checkout's code)
def _run_worker(args: argparse.Namespace, version: str, quant: str, path: str, prompt_file: Path) -> dict:
    src = args.before_src if version == "before" else str(AFTER_SRC)
    command = [
        sys.executable, __file__, "--worker", version, "--expect-src", src, "--path", path,
        "--prompt-file", str(prompt_file), "--quant", quant, "--context", str(args.context),
    ]  # fmt: skip
    for flag in ("prompt_tokens", "new_tokens", "repeats", "threads", "clients", "batch_new_tokens", "group_size"):
        command += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    run = subprocess.run(command, capture_output=True, text=True, env=worker_env(src))
    if run.returncode != 0:
        raise SystemExit(f"the {version} worker ({quant}) failed:\n{run.stderr.strip()}")
    result = json.loads(run.stdout.strip().splitlines()[-1])
    shown = {k: round(v, 3) for k, v in result.items() if isinstance(v, float)}
    print(f"  {version:6} {quant}: {shown}", file=sys.stderr, flush=True)
    return result


def worker_env(src: str) -> dict[str, str]:
    """The environment of a worker that must import qwq from `src` (put first on PYTHONPATH)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}


def check_before_src(parser: argparse.ArgumentParser, before_src: str) -> str:
    path = Path(before_src).resolve()
    if not (path / "qwq" / "__init__.py").is_file():
        parser.error(
            f"--before-src {before_src}: no qwq package there (expected {path}/qwq/__init__.py); check out the "
            "code before the engine change, e.g. `git worktree add /tmp/qwq-before <commit>`, and pass its src/"
        )
    if not (path / "qwq" / "engine" / "batching.py").is_file():
        parser.error(f"--before-src {before_src}: its qwq has no engine/batching.py, so it is not the old engine")
    if path == AFTER_SRC:
        parser.error(f"--before-src {before_src} is this checkout's own src/")
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before-src", help="src/ of a checkout of the code before the engine change (required)")
    parser.add_argument("--model", default="qwen2.5-coder:0.5b")
    parser.add_argument("--quants", nargs="+", default=["int4", "int8"], choices=["int4", "int8"])
    parser.add_argument("--rounds", type=int, default=3, help="before, after, before, after, ...: medians")
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3, help="single-stream runs per worker (their median)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--batch-new-tokens", type=int, default=32)
    parser.add_argument("--group-size", type=int, default=32, help="int4 group size")
    parser.add_argument("--context", type=int, help="the loaded context (default: prompt + new tokens + 1)")
    parser.add_argument("--worker", choices=VERSIONS, help=argparse.SUPPRESS)
    parser.add_argument("--expect-src", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--prompt-file", help=argparse.SUPPRESS)
    parser.add_argument("--quant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args)
        return
    if args.before_src is None:
        parser.error("--before-src is required: the src/ directory of the code before the engine change")
    args.before_src = check_before_src(parser, args.before_src)
    args.context = args.context or args.prompt_tokens + args.new_tokens + 1

    from qwq.benchmark import read_bandwidth_gbs
    from qwq.local_models import fetch
    from qwq.tokenizer.tokenizer import Tokenizer
    from qwq.weights.gguf import GGUFFile

    path = str(fetch(args.model))
    tokenizer = Tokenizer.from_gguf(GGUFFile(Path(path)))
    prompts = [
        tokenizer.encode(tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True))
        for q in (QUESTIONS * args.clients)[: args.clients]
    ]
    prompt_file = Path(tempfile.mkstemp(suffix=".json")[1])
    prompt_file.write_text(json.dumps(prompts))
    runs: dict[tuple[str, str], list[dict]] = {}
    bandwidths = []
    try:
        for round_index in range(args.rounds):
            bandwidths.append(read_bandwidth_gbs(args.threads))
            print(f"round {round_index + 1}/{args.rounds} (read bandwidth {bandwidths[-1]:.1f} GB/s)", file=sys.stderr)
            for quant in args.quants:
                for version in VERSIONS:
                    runs.setdefault((quant, version), []).append(_run_worker(args, version, quant, path, prompt_file))
        bandwidths.append(read_bandwidth_gbs(args.threads))
    finally:
        prompt_file.unlink()

    print(
        f"\n{args.model}: {args.prompt_tokens}-token prompt, {args.new_tokens} greedy new tokens (median of "
        f"{args.repeats}); {args.clients} clients x {args.batch_new_tokens} tokens; {args.threads} threads; "
        f"median of {args.rounds} round(s); context {args.context}; int4 groups of {args.group_size}; "
        f"{platform.machine()}, read bandwidth {min(bandwidths):.1f}-{max(bandwidths):.1f} GB/s"
    )
    print(f"before: {args.before_src}\nafter:  {AFTER_SRC}\n")
    print("| metric | quant | before | after | after / before |")
    print("|---|---|---|---|---|")
    for quant in args.quants:
        for key, label, fmt in METRICS:
            before, after = (statistics.median(r[key] for r in runs[(quant, v)]) for v in VERSIONS)
            row = f"| {label.format(clients=args.clients)} | {quant} | {fmt.format(before)} | {fmt.format(after)} |"
            print(f"{row} {after / before:.2f} |")
    print()
    for quant in args.quants:
        pairs = zip(runs[(quant, "before")], runs[(quant, "after")], strict=True)
        same = [sum(a == b for a, b in zip(rb["outputs"], ra["outputs"], strict=True)) for rb, ra in pairs]
        print(f"{quant}: batched greedy outputs identical before / after, per round: {same} of {args.clients}")
    print("(rates: after / before >= 1.00 is no slowdown; for time to first token and RSS, lower is better)")


if __name__ == "__main__":
    main()
