"""Decode speed with thousands of tokens in the context: qwq against llama.cpp on the same GGUF and threads.

Each system runs in its own process and walks up the contexts in one sequence: it prefills the text to the
first context (default 512 tokens), decodes `--new-tokens` tokens one step at a time and times them, prefills on
to the next context (2,048, 8,192, 16,384), decodes again, and so on, so the text is prefilled once. Both read
the same token ids (long text from /work/shared/data: MATH-500 problems and solutions), and the decoded steps
are fed the text's next tokens (teacher forcing), so both systems hold the same context; each step still
computes the logits and their argmax, as a greedy decode does. A step is the model's own call (qwq's
network forward with its KV cache; llama.cpp's `eval`): the engine around it adds 0.1-0.4 ms a step (see
docs/benchmarks.md) and is the same at every context.

qwq runs the model as `qwq.load(..., quant=...)` loads it (a bfloat16 KV cache, its one-call C++ layer step).
llama.cpp runs the GGUF as stored, its KV cache float16, with its flash attention off and on: either
`llama-bench` (`--llama-bench PATH`, built from llama.cpp's source: `cmake -B build -DGGML_NATIVE=ON && cmake
--build build --target llama-bench`; its `-d` depth prefills random tokens, untimed, before timing `-n` decode
steps) or llama-cpp-python (`--llama-python`, a Python that has it; fed the same text as qwq). `--rounds N`
alternates the systems N times and reports medians. Prints tok/s per context and qwq / llama.cpp (the faster
of its two settings).

    python benchmarks/long_context.py [--model qwen2.5-coder:0.5b] [--quant int4 int8] [--contexts 512 2048 8192]
        [--llama-bench PATH | --llama-python PYTHON]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path("/work/shared/data/math500.jsonl")
PREFILL_CHUNK = 512  # qwq's engine prefills in chunks of this many tokens; llama.cpp's batch the same


def _text_ids(path: str, count: int) -> list[int]:
    """`count` token ids of MATH-500 problems and solutions, one after another (the model's tokenizer)."""
    import qwq

    tokenizer = qwq.load(path, device="meta").tokenizer
    ids: list[int] = []
    with DATA.open(encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            ids += tokenizer.encode(f"Problem: {row['problem']}\nSolution: {row['solution']}\n\n")
            if len(ids) >= count:
                return ids[:count]
    raise SystemExit(f"{DATA} holds fewer than {count} tokens")


def _schedule(contexts: list[int], new_tokens: int) -> list[tuple[int, int]]:
    """(prefill up to this position, then decode from it) for each context, ascending."""
    return [(context, context + new_tokens) for context in sorted(contexts)]


def _qwq_worker(args: argparse.Namespace) -> list[float]:
    import torch

    import qwq

    torch.set_num_threads(args.threads)
    ids = json.loads(Path(args.ids).read_text())
    model = qwq.load(args.path, quant=args.quant[0], context_length=len(ids))  # a worker runs one
    network = model.network
    cache = network.new_cache(1, len(ids))
    rates, position = [], 0
    with torch.inference_mode():
        for context, end in _schedule(args.contexts, args.new_tokens):
            for start in range(position, context, PREFILL_CHUNK):
                stop = min(start + PREFILL_CHUNK, context)
                network(torch.tensor([ids[start:stop]]), torch.arange(start, stop)[None], cache, last_only=True)
            begin = time.perf_counter()
            for step in range(context, end):
                logits = network(torch.tensor([[ids[step]]]), torch.tensor([[step]]), cache, last_only=True)
                int(logits[0, -1].argmax())
            rates.append((end - context) / (time.perf_counter() - begin))
            position = end
    return rates


def _llama_worker(args: argparse.Namespace) -> list[float]:
    import numpy as np
    from llama_cpp import Llama

    ids = json.loads(Path(args.ids).read_text())
    llm = Llama(
        args.path,
        n_ctx=len(ids),
        n_threads=args.threads,
        n_threads_batch=args.threads,
        n_batch=PREFILL_CHUNK,
        flash_attn=args.flash_attn,
        verbose=False,
    )
    rates = []
    for context, end in _schedule(args.contexts, args.new_tokens):
        llm.eval(ids[llm.n_tokens : context])  # prefill on from where the last decode stopped
        begin = time.perf_counter()
        for step in range(context, end):
            llm.eval([ids[step]])
            # the last token's logits (llm.scores holds them only with logits_all, which costs every row's)
            int(np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),)).argmax())
        rates.append((end - context) / (time.perf_counter() - begin))
    return rates


def _llama_bench(args: argparse.Namespace) -> dict[str, list[float]]:
    """llama-bench's decode tok/s at each depth, flash attention off and on, in one run of it."""
    command = [args.llama_bench, "-m", args.path, "-t", str(args.threads), "-p", "0", "-n", str(args.new_tokens)]
    command += ["-d", ",".join(map(str, args.contexts)), "-fa", "0,1", "-r", "1", "-o", "json"]
    run = subprocess.run(command, capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"llama-bench failed:\n{run.stderr[-3000:]}")
    rates: dict[str, dict[int, float]] = {"llama.cpp": {}, "llama.cpp flash-attn": {}}
    for test in json.loads(run.stdout):
        rates["llama.cpp flash-attn" if test["flash_attn"] else "llama.cpp"][test["n_depth"]] = test["avg_ts"]
    return {system: [by_depth[c] for c in args.contexts] for system, by_depth in rates.items()}


def _run(args: argparse.Namespace, system: str, ids_file: Path) -> list[float]:
    """One system's rates (tok/s per context), in its own process."""
    kind, _, setting = system.partition(" ")
    python = args.llama_python if kind == "llama.cpp" else sys.executable
    command = [python, __file__, "--worker", kind, "--path", args.path, "--ids", str(ids_file)]
    command += ["--threads", str(args.threads), "--new-tokens", str(args.new_tokens)]
    command += ["--contexts", *map(str, args.contexts)]
    if kind == "qwq":
        command += ["--quant", setting]
    elif setting == "flash-attn":
        command += ["--flash-attn"]
    run = subprocess.run(command, capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"{system} failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def _round(args: argparse.Namespace, systems: list[str], ids_file: Path) -> dict[str, list[float]]:
    rates = _llama_bench(args) if args.llama_bench else {}
    for system in systems:
        if system not in rates:
            rates[system] = _run(args, system, ids_file)
    for system in systems:
        listed = ", ".join(f"{c}: {r:.2f}" for c, r in zip(args.contexts, rates[system], strict=True))
        print(f"measured {system}: {listed}", file=sys.stderr)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2.5-coder:0.5b")
    parser.add_argument("--quant", nargs="+", default=["int4", "int8"], choices=["int4", "int8"])
    parser.add_argument("--contexts", nargs="+", type=int, default=[512, 2048, 8192, 16384])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    llama = parser.add_mutually_exclusive_group(required=False)
    llama.add_argument("--llama-bench", help="llama.cpp's llama-bench binary")
    llama.add_argument("--llama-python", help="a Python with llama-cpp-python installed")
    parser.add_argument("--worker", choices=["qwq", "llama.cpp"], help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--ids", help=argparse.SUPPRESS)
    parser.add_argument("--flash-attn", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.contexts = sorted(args.contexts)
    if args.worker is not None:
        rates = _qwq_worker(args) if args.worker == "qwq" else _llama_worker(args)
        print(json.dumps(rates))
        return

    if not (args.llama_bench or args.llama_python):
        parser.error("give llama.cpp as --llama-bench PATH or --llama-python PYTHON")
    from qwq.store import resolve

    args.path = str(resolve(args.model))
    systems = ["llama.cpp", "llama.cpp flash-attn", *(f"qwq {quant}" for quant in args.quant)]
    with tempfile.TemporaryDirectory() as scratch:
        ids_file = Path(scratch) / "ids.json"
        ids_file.write_text(json.dumps(_text_ids(args.path, args.contexts[-1] + args.new_tokens)))
        runs: dict[str, list[list[float]]] = {system: [] for system in systems}
        for _ in range(args.rounds):
            for system, rates in _round(args, systems, ids_file).items():
                runs[system].append(rates)
    medians = {system: [statistics.median(r[i] for r in rounds) for i in range(len(args.contexts))]
               for system, rounds in runs.items()}  # fmt: skip
    best_llama = [max(a, b) for a, b in zip(medians["llama.cpp"], medians["llama.cpp flash-attn"], strict=True)]
    print(f"\n{args.model} ({args.path}), {args.threads} threads, {args.new_tokens} decode steps per context, "
          f"median of {args.rounds} round(s); decode tok/s")  # fmt: skip
    header = ["context", *systems, *(f"qwq {q} / llama.cpp" for q in args.quant)]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for i, context in enumerate(args.contexts):
        cells = [f"{medians[s][i]:.2f}" for s in systems]
        cells += [f"{medians[f'qwq {q}'][i] / best_llama[i]:.2f}x" for q in args.quant]
        print(f"| {context} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
