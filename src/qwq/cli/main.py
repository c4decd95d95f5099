"""The `qwq` command line: `qwq run MODEL [PROMPT]` (a one-shot streamed chat answer) and `qwq pull NAME`.

The CLI is a client of the same Python API everyone else uses; it is the only place that configures
logging and prints.
"""

from __future__ import annotations

import argparse
import logging
import sys

from qwq import __version__
from qwq.api import load
from qwq.errors import QwqError
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
    run.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    run.add_argument("--device")
    run.add_argument("--verbose", action="store_true", help="log loading progress to stderr")
    pull = commands.add_parser("pull", help=f"fetch and verify a small local model ({', '.join(LOCAL_MODELS)})")
    pull.add_argument("names", nargs="+", metavar="NAME")
    return parser


def _run(args: argparse.Namespace) -> int:
    prompt = args.prompt if args.prompt is not None else sys.stdin.read()
    if not prompt.strip():
        print("error: no prompt given (pass it as an argument or on stdin)", file=sys.stderr)
        return 2
    model = load(args.model, dtype=args.dtype, device=args.device)
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


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    verbose = args.command == "pull" or args.verbose
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s")
    try:
        return _pull(args) if args.command == "pull" else _run(args)
    except QwqError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
