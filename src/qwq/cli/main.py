"""The `qwq` command line: `qwq run MODEL [PROMPT]` (a one-shot streamed chat answer), `qwq pull NAME`,
and `qwq bench MODEL` (prefill / decode speed and peak memory).

The CLI is a client of the same Python API everyone else uses; it is the only place that configures
logging and prints.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

import torch

from qwq import __version__
from qwq.api import load
from qwq.engine.benchmark import run_benchmark
from qwq.errors import InvalidRequestError, QwqError
from qwq.local_models import DEFAULT_MODEL, LOCAL_MODELS, fetch


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qwq", description="Run QwQ-style reasoning models locally.")
    parser.add_argument("--version", action="version", version=f"qwq {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="answer one prompt (argument or stdin) with a chat model")
    run.add_argument("model", help=f"a .gguf file, an HF checkpoint directory or a name such as {DEFAULT_MODEL}")
    run.add_argument("prompt", nargs="?", help="the question; read from stdin when omitted")
    run.add_argument("--system", help="a system message to put first")
    run.add_argument("--temperature", type=float)
    run.add_argument("--top-p", type=float)
    run.add_argument("--top-k", type=int)
    run.add_argument("--min-p", type=float)
    run.add_argument("--seed", type=int)
    run.add_argument("--max-tokens", type=int, default=512)
    _add_load_options(run)
    run.add_argument("--verbose", action="store_true", help="log loading progress to stderr")
    pull = commands.add_parser("pull", help=f"fetch and verify a small local model ({', '.join(LOCAL_MODELS)})")
    pull.add_argument("names", nargs="+", metavar="NAME")
    bench = commands.add_parser("bench", help="measure time to first token, prefill and decode speed, peak memory")
    bench.add_argument("model", help="a .gguf file, an HF checkpoint directory or a local model name")
    bench.add_argument("--prompt-tokens", type=int, default=512)
    bench.add_argument("--new-tokens", type=int, default=128)
    bench.add_argument("--repeats", type=int, default=3)
    bench.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    _add_load_options(bench)
    return parser


def _add_load_options(command: argparse.ArgumentParser) -> None:
    """Load-time choices, shared by every command that loads a model."""
    command.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    command.add_argument("--device")
    command.add_argument("--quant", choices=["int8", "int4"], help="weight-only quantization (CPU)")
    command.add_argument("--quant-group-size", type=int, default=32, help="int4 group size (32, 64, 128, 256)")
    command.add_argument("--threads", type=int, help="CPU threads (default: all cores torch sees)")


def _load(args: argparse.Namespace):
    if args.threads is not None:
        if args.threads < 1:
            raise InvalidRequestError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    return load(
        args.model, dtype=args.dtype, device=args.device, quant=args.quant, quant_group_size=args.quant_group_size
    )


def _run(args: argparse.Namespace) -> int:
    prompt = args.prompt if args.prompt is not None else sys.stdin.read()
    if not prompt.strip():
        print("error: no prompt given (pass it as an argument or on stdin)", file=sys.stderr)
        return 2
    model = _load(args)
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
        {"role": "user", "content": prompt}
    ]
    stream = model.chat(
        messages,
        stream=True,
        max_new_tokens=args.max_tokens,
        seed=args.seed,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        min_p=args.min_p,
    )
    for piece in stream:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def _pull(args: argparse.Namespace) -> int:
    for name in args.names:
        print(fetch(name))
    return 0


def _bench(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    console = Console(stderr=True)
    with console.status(f"loading {args.model}"):
        model = _load(args)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("generating", total=args.repeats * (args.new_tokens + 1))
        result = run_benchmark(
            model,
            args.prompt_tokens,
            args.new_tokens,
            args.repeats,
            on_step=lambda done, total: progress.update(task, completed=done),
        )
    if args.json:
        print(json.dumps({"model": args.model, "threads": torch.get_num_threads(), **result.to_dict()}))
        return 0
    table = Table(
        title=f"{args.model}: {args.prompt_tokens}-token prompt, {args.new_tokens} new tokens, "
        f"{torch.get_num_threads()} threads, {args.repeats} runs"
    )
    for column in ("metric", "median", "min", "max"):
        table.add_column(column, justify="right" if column != "metric" else "left")
    for label, summary in (
        ("time to first token (s)", result.time_to_first_token_s),
        ("prefill (tokens/s)", result.prefill_tokens_per_s),
        ("decode (tokens/s)", result.decode_tokens_per_s),
    ):
        table.add_row(label, f"{summary.median:.3f}", f"{summary.low:.3f}", f"{summary.high:.3f}")
    table.add_row("peak RSS (GiB)", f"{result.peak_rss_gib:.2f}", "", "")
    Console().print(table)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    verbose = args.command == "pull" or getattr(args, "verbose", False)
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s")
    try:
        return {"pull": _pull, "run": _run, "bench": _bench}[args.command](args)
    except QwqError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
