"""The `qwq` command line: `run` (one-shot or interactive chat), `pull`, `list`, `show`, `rm`, `serve`, `ps`,
`stop`, `bench`, `check`, `eval`.

The CLI is a client of the same Python API everyone else uses; it is the only place that configures
logging and prints. Errors are one line on stderr with a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path

import torch

from qwq import __version__
from qwq.api import Model, load
from qwq.benchmark import run_benchmark
from qwq.cli.eval_command import add_eval_parser, run_eval_command
from qwq.cli.info import format_rows, info_rows, parameter_rows
from qwq.cli.loading import add_load_options, check_load_options, load_model
from qwq.cli.params import add_control_options, add_sampling_options, params_from
from qwq.cli.pull_display import PullDisplay
from qwq.cli.render import ReplyPrinter, finish_note, print_stats
from qwq.cli.server_client import add_host_option, ps_command, stop_command
from qwq.engine.reasoning_split import STYLES, ReasoningFormat
from qwq.errors import InvalidRequestError, QwqError
from qwq.local_models import DEFAULT_MODEL
from qwq.reasoning.guard_protocol import Guard
from qwq.server.keep_alive import DEFAULT_KEEP_ALIVE
from qwq.store import ALIASES, CATALOG, list_pulled, lookup, pull, remove, resolve

_GUARD_HELP = "a safety guard for prompts and replies: a policy .toml file, or a guard model (name or path)"
_MODEL_HELP = f"a name such as {DEFAULT_MODEL} or qwq, hf.co/OWNER/REPO, a .gguf file or an HF checkpoint directory"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qwq", description="Run QwQ-style reasoning models locally.")
    parser.add_argument("--version", action="version", version=f"qwq {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser("run", help="chat with a model: one answer (prompt or stdin) or interactively")
    run.add_argument("model", help=_MODEL_HELP)
    run.add_argument(
        "prompt", nargs="*", help="the question (its words, as ollama takes them); read from stdin when piped"
    )
    run.add_argument("--system", help="a system message to put first")
    add_sampling_options(run)
    run.add_argument("--hide-reasoning", action="store_true", help="print only the final answer")
    run.add_argument(
        "--reasoning-format",
        choices=["auto", *STYLES],
        default="auto",
        help="how the reasoning is told apart from the answer (default: from the model's vocabulary and template)",
    )
    run.add_argument("--verbose", action="store_true", help="print timings and token rates after each answer")
    add_control_options(run).add_argument("--guard", help=_GUARD_HELP)
    add_load_options(run)
    pull_command = commands.add_parser("pull", help="download and verify models")
    pull_command.add_argument("names", nargs="+", metavar="MODEL", help="names such as qwq or hf.co/OWNER/REPO")
    commands.add_parser("list", help="list the models in the local store")
    show = commands.add_parser("show", help="architecture, parameters, quantization, context, template, defaults")
    show.add_argument("model", help=_MODEL_HELP)
    show.add_argument("--template", action="store_true", help="print only the chat template")
    show.add_argument("--parameters", action="store_true", help="print only the default sampling parameters")
    rm = commands.add_parser("rm", help="delete pulled models from the local store")
    rm.add_argument("names", nargs="+", metavar="MODEL")
    serve = commands.add_parser("serve", help="serve OpenAI- and Ollama-compatible APIs and a web chat page")
    serve.add_argument(
        "models",
        nargs="*",
        metavar="MODEL",
        help="models to serve besides every pulled one (the first loaded at start): names, .gguf files, folders",
    )
    serve.add_argument(
        "--max-loaded",
        type=int,
        help="models resident at once; the least recently used is unloaded first (default: $QWQ_MAX_LOADED, else 1)",
    )
    serve.add_argument(
        "--keep-alive",
        default=os.environ.get("QWQ_KEEP_ALIVE", DEFAULT_KEEP_ALIVE),
        help="how long an idle model stays loaded: 5m, 1h, seconds, 0, -1 for ever (default: $QWQ_KEEP_ALIVE, else 5m)",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    serve.add_argument("--port", type=int, default=11435)
    serve.add_argument("--api-key", help="require this bearer key (seen in `ps`: prefer --api-key-file, QWQ_API_KEY)")
    serve.add_argument("--api-key-file", type=Path, help="require the bearer key written in this file")
    serve.add_argument("--cors-origin", action="append", default=[], help="allow browser calls from this origin")
    serve.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        help="also answer requests whose Host is this name ('.example.com' for a domain, '*' for any)",
    )
    serve.add_argument(
        "--read-timeout", type=float, default=30.0, help="seconds a request's headers or each body chunk may take"
    )
    serve.add_argument("--max-batch", type=int, default=8, help="sequences decoded together (KV-cache slots)")
    serve.add_argument("--max-queue", type=int, default=64, help="requests waiting beyond which the server says 503")
    serve.add_argument("--reasoning-format", choices=["auto", *STYLES], default="auto")
    serve.add_argument("--guard", help=_GUARD_HELP)
    add_sampling_options(serve.add_argument_group("sampling defaults (for requests that leave them unset)"))
    add_load_options(serve)
    ps = commands.add_parser("ps", help="list the models a running `qwq serve` holds in memory")
    add_host_option(ps)
    stop = commands.add_parser("stop", help="unload a model from a running `qwq serve`")
    stop.add_argument("models", nargs="+", metavar="MODEL")
    add_host_option(stop)
    check = commands.add_parser("check", help="read every tensor of a checkpoint and scan it for NaN and infinities")
    check.add_argument("model", help=_MODEL_HELP)
    bench = commands.add_parser("bench", help="measure time to first token, prefill and decode speed, peak memory")
    bench.add_argument("model", help=_MODEL_HELP)
    bench.add_argument("--prompt-tokens", type=int, default=512)
    bench.add_argument("--new-tokens", type=int, default=128)
    bench.add_argument("--repeats", type=int, default=3)
    bench.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    add_load_options(bench)
    add_eval_parser(commands)
    return parser


def _set_reasoning_format(args: argparse.Namespace, model: Model) -> None:
    if args.reasoning_format != "auto":
        model.reasoning = ReasoningFormat.named(args.reasoning_format)


def _guard(args: argparse.Namespace) -> Guard | None:
    """The safety guard named by --guard (a policy file or a guard model), loaded before the model."""
    if not args.guard:
        return None
    from qwq.guard import load_guard

    return load_guard(args.guard)


def _run(args: argparse.Namespace) -> int:
    from qwq.cli.repl import ChatSession, ChatSettings, run_chat

    interactive = args.prompt is None and sys.stdin.isatty()
    prompt = args.prompt if args.prompt is not None or interactive else sys.stdin.read()
    if not interactive and not prompt.strip():
        print("error: no prompt given (pass it as an argument or on stdin)", file=sys.stderr)
        return 2
    params = params_from(args)
    started = time.perf_counter()
    guard = _guard(args)
    model = load_model(args)
    load_seconds = time.perf_counter() - started
    settings = ChatSettings(
        params=params, system=args.system, verbose=args.verbose, hide_reasoning=args.hide_reasoning, guard=guard
    )
    _set_reasoning_format(args, model)
    if interactive:
        return run_chat(ChatSession(model, settings, load_seconds))
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
        {"role": "user", "content": prompt}
    ]
    asked = time.perf_counter()
    completion = model.complete(model.chat_request(messages, params, guard=guard))
    printer = ReplyPrinter(sys.stdout, None if args.hide_reasoning else sys.stderr, False, sys.stderr)
    reply = printer.stream(completion)
    if (note := finish_note(reply)) is not None:
        print(note if note.startswith("error") else f"qwq: {note.strip('()')}", file=sys.stderr)
    if args.verbose:
        print_stats(reply.stats, time.perf_counter() - asked + load_seconds, load_seconds, finish=reply.finish_reason)
    return 1 if reply.finish_reason == "error" else 0


def _pull(args: argparse.Namespace) -> int:
    for name in args.names:
        with PullDisplay(sys.stderr) as display:
            path = pull(name, display)
        print(path)
    return 0


def _list(args: argparse.Namespace) -> int:
    models = list_pulled()
    width = max([len(m.name) for m in models] + [20]) + 2
    print(f"{'NAME':<{width}}{'SIZE':>10}  {'MODIFIED':<17}  PATH")
    for entry in models:
        modified = entry.modified.strftime("%Y-%m-%d %H:%M")
        print(f"{entry.name:<{width}}{entry.size_bytes / 1e9:>8.2f} GB  {modified:<17}  {entry.path}")
    if not models:
        known = ", ".join([*ALIASES, *CATALOG])
        print(f"(no models pulled yet; known names: {known})", file=sys.stderr)
    return 0


def _show(args: argparse.Namespace) -> int:
    entry = lookup(args.model)
    if entry is not None and not entry.pulled and entry.preset is not None and entry.split is None:
        model = load(entry.preset, device="meta")  # describe the published architecture without downloading
        model.source = f"{entry.name} (not pulled: {entry.description})"
    else:
        model = load(args.model, device="meta")
    if args.template:
        print(model.tokenizer.chat_template if model.tokenizer and model.tokenizer.chat_template else "(none)")
        return 0
    parameters = format_rows("Parameters", parameter_rows(model.generation_defaults))
    if args.parameters:
        print(parameters)
        return 0
    template = model.tokenizer.chat_template if model.tokenizer else None
    first_lines = "\n".join(f"    {line}" for line in (template or "(pulled with the model)").splitlines()[:6])
    sections = [format_rows("Model", info_rows(model)), parameters, f"  Chat template (--template)\n{first_lines}"]
    print("\n\n".join(sections))
    return 0


def _serve(args: argparse.Namespace) -> int:
    from qwq.server.keep_alive import keep_alive_seconds
    from qwq.server.registry import ModelRegistry
    from qwq.server.run import check_port_free, serve, service_opener
    from qwq.server.served_models import ModelCatalog, ServedModel, given_model

    if args.max_batch < 1 or args.max_queue < 0:
        raise InvalidRequestError("--max-batch must be at least 1 and --max-queue at least 0")
    if args.max_loaded is None:
        loaded = os.environ.get("QWQ_MAX_LOADED", "1")
        if not loaded.strip().isdigit():
            raise InvalidRequestError(f"QWQ_MAX_LOADED must be a number of models, got {loaded!r}")
        args.max_loaded = int(loaded)
    if args.max_loaded < 1:
        raise InvalidRequestError(f"--max-loaded must be at least 1, got {args.max_loaded}")
    if not 0 < args.read_timeout < float("inf"):
        raise InvalidRequestError(f"--read-timeout must be a positive number of seconds, got {args.read_timeout:g}")
    keep_alive = keep_alive_seconds(args.keep_alive, "--keep-alive")
    defaults = params_from(args)
    api_key = _api_key(args)
    check_load_options(args)
    check_port_free(args.host, args.port)  # before the model loads, not after a minute of it
    guard = _guard(args)
    given = [given_model(name) for name in args.models]

    def load_served(served: ServedModel) -> Model:
        """With the command's load flags; a bar only for the loads at start (on the main thread): a load on
        first use, in a request's thread, is told in the log."""
        options = argparse.Namespace(**{**vars(args), "model": served.source})
        model = load_model(options, bar=threading.current_thread() is threading.main_thread())
        _set_reasoning_format(args, model)
        return model

    def read_header(served: ServedModel) -> Model:
        """Its config and tokenizer with the same flags, no weights: a broken file is refused before room is
        made for it."""
        return load_model(argparse.Namespace(**{**vars(args), "model": str(served.path), "device": "meta"}), bar=False)

    opener = service_opener(
        load_served, guard=guard, defaults=defaults, max_batch=args.max_batch, max_queue=args.max_queue
    )
    models = ModelRegistry(
        ModelCatalog(given), opener, preflight=read_header, max_loaded=args.max_loaded, keep_alive=keep_alive
    )
    logging.getLogger("qwq").setLevel(logging.INFO)
    try:
        for served in given[: args.max_loaded]:  # loaded at start: a broken model is told now, not on first use
            models.release(models.acquire(served.name))
    except QwqError:
        models.close()
        raise
    return serve(
        models,
        host=args.host,
        port=args.port,
        api_key=api_key,
        cors_origins=args.cors_origin,
        allowed_hosts=args.allowed_host,
        read_timeout=args.read_timeout,
    )


def _api_key(args: argparse.Namespace) -> str | None:
    """The bearer key: --api-key-file, else --api-key (with a warning: other users see it in `ps`), else
    QWQ_API_KEY."""
    if args.api_key_file is not None and args.api_key is not None:
        raise InvalidRequestError("give the key once: --api-key or --api-key-file, not both")
    if args.api_key_file is not None:
        try:
            key = args.api_key_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidRequestError(f"--api-key-file {args.api_key_file}: cannot be read ({exc})") from None
        if not key or "\n" in key:
            raise InvalidRequestError(f"--api-key-file {args.api_key_file}: must hold the key on one line")
        return key
    if args.api_key is not None:
        print(
            "warning: --api-key is visible to every user of this machine (ps); prefer --api-key-file or QWQ_API_KEY",
            file=sys.stderr,
        )
        return args.api_key
    return os.environ.get("QWQ_API_KEY") or None


def _check(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import Progress

    from qwq.weights.check import check_checkpoint

    path = resolve(args.model)
    console = Console(stderr=True)
    with Progress(console=console, transient=True, disable=not console.is_terminal) as progress:
        task = progress.add_task(f"checking {path.name}", total=None)
        report = check_checkpoint(path, lambda done, total: progress.update(task, completed=done, total=total or None))
    for name, count in report.bad:
        print(f"error: {path}: tensor {name!r} holds {count} NaN or infinite values", file=sys.stderr)
    verdict = "no NaN or infinite values" if report.ok else f"{len(report.bad)} tensors hold NaN or infinite values"
    print(f"{path}: {report.tensors} tensors, {report.values:,} values read in {report.seconds:.1f} s: {verdict}")
    return 0 if report.ok else 1


def _rm(args: argparse.Namespace) -> int:
    for name in args.names:
        remove(name)
        print(f"deleted '{name}'")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    console = Console(stderr=True)
    with console.status(f"loading {args.model}"):
        model = load_model(args)
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


def _parse(argv: list[str] | None) -> argparse.Namespace:
    """The arguments, with `qwq run MODEL [--flags] WORDS... [--flags]` taken as ollama takes it: the words
    are the prompt (argparse leaves the words after an option unrecognized: they are collected here)."""
    parser = _parser()
    args, leftover = parser.parse_known_args(argv)
    if args.command == "run":
        words = [*args.prompt, *(word for word in leftover if not word.startswith("-"))]
        leftover = [word for word in leftover if word.startswith("-")]
        args.prompt = " ".join(words) if words else None
    if leftover:
        parser.error(f"unrecognized arguments: {' '.join(leftover)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(level=logging.INFO if args.command == "pull" else logging.WARNING, format="%(message)s")
    commands = {
        "run": _run,
        "pull": _pull,
        "list": _list,
        "show": _show,
        "rm": _rm,
        "serve": _serve,
        "ps": ps_command,
        "stop": stop_command,
        "bench": _bench,
        "check": _check,
        "eval": run_eval_command,
    }
    try:
        return commands[args.command](args)
    except QwqError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
