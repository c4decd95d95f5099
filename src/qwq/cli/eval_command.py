"""`qwq eval run | score | report`: benchmarks against the in-process engine or an OpenAI-compatible endpoint,
resumable, with a progress bar (plain lines when stderr is not a terminal) and a report at the end.

    qwq eval run math500 --model qwq --max-tokens 32768 --samples 4 --out runs/math500
    qwq eval run gpqa-diamond --endpoint http://127.0.0.1:8000 --concurrency 32 --hf-token $HF_TOKEN
    qwq eval run --data mine.jsonl --task math --model PATH --quant int4 --limit 3 --max-tokens 96 --out DIR
    qwq eval score replies.jsonl --task math --out scored.jsonl
    qwq eval report DIR
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qwq.cli.loading import add_load_options, check_load_options, load_model
from qwq.cli.params import add_control_options, add_sampling_options, params_from, sampling_values
from qwq.errors import InvalidRequestError
from qwq.eval.types import TASKS

if TYPE_CHECKING:
    from qwq.eval.backends import Backend
    from qwq.eval.runner import Progress
    from qwq.tokenizer.tokenizer import Tokenizer

_PLAIN_EVERY_S = 2.0  # plain progress lines at most this often


def add_eval_parser(commands: argparse._SubParsersAction) -> None:
    """`qwq eval` and its three subcommands, added to the main parser's subcommands."""
    from qwq.eval.benchmarks.registry import BENCHMARKS

    evaluation = commands.add_parser("eval", help="run benchmarks, grade replies, write reports")
    sub = evaluation.add_subparsers(dest="eval_command", required=True, metavar="SUBCOMMAND")
    run = sub.add_parser("run", help="run a benchmark (resumable: the same command again continues it)")
    run.add_argument("benchmark", nargs="?", help=f"{', '.join(BENCHMARKS)}; or leave out with --data and --task")
    data = run.add_argument_group("data")
    data.add_argument("--data", type=Path, metavar="FILE", help="a JSONL file: a named benchmark's layout, or --task's")
    data.add_argument("--task", choices=TASKS, help="the task of a --data file in the generic layout")
    data.add_argument("--data-dir", type=Path, help="where benchmark files are looked for first ($QWQ_EVAL_DATA)")
    data.add_argument("--limit", type=int, metavar="N", help="the first N items only")
    data.add_argument("--shuffle-seed", type=int, default=0, help="the base seed of GPQA's option shuffles")
    data.add_argument("--release", default="release_v5", help="LiveCodeBench release (release_v5, v6, v4_v5, ...)")
    data.add_argument("--since", type=date.fromisoformat, metavar="YYYY-MM-DD", help="LiveCodeBench contests from")
    data.add_argument("--until", type=date.fromisoformat, metavar="YYYY-MM-DD", help="LiveCodeBench contests to")
    data.add_argument("--hf-token", default=os.environ.get("HF_TOKEN"), help="for gated Hub sets (GPQA; $HF_TOKEN)")
    where = run.add_argument_group("model")
    where.add_argument("--model", help="a model name or path (in-process), or the name to ask an --endpoint for")
    where.add_argument("--endpoint", metavar="URL", help="an OpenAI-compatible server (qwq serve, vLLM, Ollama /v1)")
    where.add_argument("--api-key", default=os.environ.get("QWQ_API_KEY"), help="the endpoint's bearer key")
    where.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for one reply (endpoint)")
    where.add_argument("--retries", type=int, default=6, help="retries of a failed request, with backoff (endpoint)")
    where.add_argument("--tokenizer", help="a model whose tokenizer counts and loop-checks an endpoint's replies")
    where.add_argument(
        "--reasoning-format",
        choices=["think", "qwq-preview", "none"],
        default="think",
        help="how an endpoint reply without reasoning_content is split (default: <think> tags)",
    )
    add_load_options(where)
    sampling = run.add_argument_group("sampling (default: the model card's, i.e. the checkpoint's defaults)")
    sampling.add_argument("--samples", type=int, default=1, metavar="K", help="samples per item (pass@k, majority)")
    sampling.add_argument("--concurrency", type=int, default=8, help="samples in flight at once")
    add_sampling_options(
        sampling,
        leave_out=("repetition_penalty",),  # the published benchmark settings have none
        helps={"seed": "sample k of an item is seeded SEED + k", "max_tokens": "new tokens per reply at most"},
    )
    sampling.add_argument(
        "--system", help="the system prompt ('' for none; default: QwQ's for QwQ, else the template's)"
    )
    add_control_options(run, scope=False)
    run.add_argument("--out", type=Path, help="the run folder (default: qwq-eval/BENCHMARK)")
    run.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    score = sub.add_parser("score", help="grade a JSONL of replies (id, question, answer, response)")
    score.add_argument("file", type=Path)
    score.add_argument("--task", choices=["math", "mcq"], required=True)
    score.add_argument("--out", type=Path, help="where the scored JSONL goes (default: stdout)")
    report = sub.add_parser("report", help="write report.md and report.html for a run folder")
    report.add_argument("dir", type=Path)
    report.add_argument("--tokenizer", help="a model whose tokenizer loop-checks replies logged without token ids")


def run_eval_command(args: argparse.Namespace) -> int:
    commands = {"run": _run, "score": _score, "report": _report}
    return commands[args.eval_command](args)


def _settings(args: argparse.Namespace, model_name: str):
    """The run's settings (the flags' values are checked first thing in `_run`, by `params_from`)."""
    from qwq.eval.prompts import system_prompt
    from qwq.eval.runner import RunSettings

    controls = {
        "loop": args.loop,
        "max_thinking_tokens": args.think_budget,
        "min_thinking_tokens": args.min_think,
        "max_answer_tokens": args.answer_budget,
        "language_guard": args.language_guard,
        "language": args.language,
    }
    return RunSettings(
        **sampling_values(args),
        controls={k: v for k, v in controls.items() if v is not None},
        system=system_prompt(model_name, args.system),
    )


def _check_counts(args: argparse.Namespace) -> None:
    for flag, value, low in (
        ("--samples", args.samples, 1),
        ("--limit", args.limit, 1),
        ("--concurrency", args.concurrency, 1),
        ("--retries", args.retries, 0),
        ("--threads", args.threads, 1),
        ("--ctx", args.ctx, 1),
    ):
        if value is not None and value < low:
            raise InvalidRequestError(f"{flag} must be at least {low}, got {value}")
    if args.timeout <= 0:
        raise InvalidRequestError(f"--timeout must be a positive number of seconds, got {args.timeout}")
    if args.model is None and args.endpoint is None:
        raise InvalidRequestError("name a model to load (--model NAME|PATH) or a server to ask (--endpoint URL)")


def _local_tokenizer(name: str | None) -> Tokenizer | None:
    """The tokenizer of a model that is on this machine (a path, or a name already pulled); never downloads."""
    if not name:
        return None
    from qwq.api import load
    from qwq.store import lookup

    entry = None if Path(name).expanduser().exists() else lookup(name)
    if not Path(name).expanduser().exists() and (entry is None or not entry.pulled):
        return None
    return load(name, device="meta").tokenizer


def _backend(args: argparse.Namespace) -> Backend:
    from qwq.eval.backends import EndpointBackend, EngineBackend

    if args.endpoint:
        tokenizer = _local_tokenizer(args.tokenizer or args.model)
        return EndpointBackend(
            args.endpoint,
            args.model,
            api_key=args.api_key,
            concurrency=args.concurrency,
            timeout=args.timeout,
            retries=args.retries,
            tokenizer=tokenizer,
            reasoning_style=args.reasoning_format,
        )
    from qwq.api import load

    check_load_options(args)

    def load_weights():
        # a plain line: the progress bar is already live (rich allows one live display), and prints above it
        print(f"loading {args.model} ...", file=sys.stderr, flush=True)
        return load_model(args, bar=False, default_context=None)

    plan = load(args.model, device="meta")  # config, tokenizer and defaults: enough to tell what is done
    return EngineBackend(
        args.model, plan, load_weights, quant=args.quant, dtype=args.dtype, concurrency=args.concurrency
    )


def _run(args: argparse.Namespace) -> int:
    from qwq.eval.benchmarks.registry import load_dataset
    from qwq.eval.benchmarks.spec import DataOptions
    from qwq.eval.runner import run_eval

    _check_counts(args)
    params_from(args)  # every sampling and control flag, before the data is read or a model looked for
    if args.benchmark is None and args.data is None:
        raise InvalidRequestError("name a benchmark (qwq eval run math500 ...) or pass --data FILE --task TASK")
    options = DataOptions(args.shuffle_seed, args.hf_token, args.release, args.since, args.until)
    dataset = load_dataset(args.benchmark, data_file=args.data, task=args.task, data_dir=args.data_dir, options=options)
    if args.limit is not None:
        dataset = dataclasses.replace(dataset, items=dataset.items[: args.limit])
    out_dir = args.out or Path("qwq-eval") / dataset.name
    backend = _backend(args)
    model_name = backend.identity()["model"]
    settings = _settings(args, model_name)
    reporter = _ProgressReporter(dataset.title)
    try:
        with reporter:
            result = run_eval(
                dataset, backend, settings, out_dir, samples=args.samples, options=options, on_progress=reporter.update
            )
    except KeyboardInterrupt:
        print(f"interrupted: finished samples are in {out_dir}; run the same command to resume", file=sys.stderr)
        return 130
    print(f"{dataset.title}: {result.new} new samples, {result.resumed} resumed, log {result.samples_path}")
    if not args.no_report:
        _write_report(out_dir, backend.tokenizer)
    return 0


def _write_report(out_dir: Path, tokenizer: Tokenizer | None) -> None:
    from qwq.eval.report import write_report

    files = write_report(out_dir, tokenizer)
    for summary in json.loads(files.summary.read_text(encoding="utf-8")):
        published = summary.get("published")
        versus = f" (QwQ-32B-Preview published {published:.1f}%)" if published is not None else ""
        print(
            f"{summary['title']}: accuracy {summary['accuracy']:.1f}% [{summary['ci_low']:.1f}, "
            f"{summary['ci_high']:.1f}] over {summary['items']} items{versus}; "
            f"no answer {summary['no_answer_rate']:.1f}%"
        )
    print(f"report: {files.markdown} and {files.html}")


class _ProgressReporter:
    """A rich progress bar with the ETA, tokens/s and accuracy so far on a terminal; else a plain line every
    few seconds (and at the end)."""

    def __init__(self, title: str) -> None:
        from rich.console import Console

        self.title = title
        self.console = Console(stderr=True)
        self.bar = None
        self.task = None
        self._last_line = 0.0

    def __enter__(self) -> _ProgressReporter:
        if self.console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[rate]}"),
                console=self.console,
            )
            self.bar.__enter__()
            self.task = self.bar.add_task(self.title, total=None, rate="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def update(self, progress: Progress) -> None:
        elapsed = max(1e-9, time.perf_counter() - progress.started)
        rate = progress.tokens / elapsed
        accuracy = 100 * progress.correct / max(1, progress.new)
        line = f"{rate:.1f} tok/s, {accuracy:.0f}% correct, {progress.no_answer} no answer (new samples)"
        if self.bar is not None:
            self.bar.update(self.task, total=progress.total, completed=progress.done, rate=line)
            return
        now = time.perf_counter()
        if progress.record is None:
            print(f"{self.title}: {progress.total} samples, {progress.resumed} already done", file=sys.stderr)
            return
        if now - self._last_line < _PLAIN_EVERY_S and progress.done < progress.total:
            return
        self._last_line = now
        left = progress.total - progress.done
        eta = elapsed / max(1, progress.new) * left
        print(f"{self.title}: {progress.done}/{progress.total}, ETA {eta:.0f} s, {line}", file=sys.stderr, flush=True)


def _score(args: argparse.Namespace) -> int:
    from qwq.eval.grading import score_records
    from qwq.eval.jsonl import read_records

    scored: list[dict[str, Any]] = list(score_records(read_records(args.file), args.task))
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in scored)
    if args.out is None:
        sys.stdout.write(lines)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(lines, encoding="utf-8")
    correct = sum(bool(r.get("correct")) for r in scored)
    share = 100 * correct / len(scored) if scored else 0.0
    print(f"{correct}/{len(scored)} correct ({share:.1f}%)", file=sys.stderr)
    return 0


def _report(args: argparse.Namespace) -> int:
    tokenizer = _local_tokenizer(args.tokenizer) if args.tokenizer else _tokenizer_of_run(args.dir)
    _write_report(args.dir, tokenizer)
    return 0


def _tokenizer_of_run(out_dir: Path) -> Tokenizer | None:
    """The tokenizer of the model a folder's runs used, when it is on this machine (for the loop check of
    replies logged without token ids)."""
    from qwq.eval.runner import CONFIG_FILE

    path = out_dir / CONFIG_FILE
    if not path.is_file():
        return None
    configs = json.loads(path.read_text(encoding="utf-8"))
    names = {c.get("backend", {}).get("model") for c in configs.values()}
    return _local_tokenizer(names.pop()) if len(names) == 1 else None
