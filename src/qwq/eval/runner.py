"""The resumable evaluation run: every (item, sample) of a benchmark sent to a backend, each reply graded and
appended to `samples.jsonl` (flushed) the moment it ends, keyed by benchmark, item, sample index and a hash of
the configuration, so the same command run again skips what is done and a Ctrl+C loses no finished sample.

The hash covers what changes a reply: the model and its quantization, the sampling, the token limit, the
reasoning controls, the system prompt, the prompt templates' version and the item options (GPQA's shuffle seed).
The number of samples, the limit and the concurrency are not in it: raising them resumes the same run.
A reply that ended without an answer (cut off by the token limit, a loop, a budget, an error; or giving no
prediction) is scored wrong and flagged `no_answer`, so the report can count it apart.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from qwq.eval.backends import Backend, Job, Reply
from qwq.eval.benchmarks.registry import Dataset
from qwq.eval.benchmarks.spec import DataOptions
from qwq.eval.jsonl import append_record, open_for_append, read_records
from qwq.eval.prompts import PROMPT_VERSION, messages
from qwq.eval.types import Item, Verdict

SAMPLES_FILE = "samples.jsonl"
CONFIG_FILE = "config.json"
CUT_OFF = frozenset({"length", "loop", "budget", "error", "abort", "content_filter"})  # ended without an answer
CONTROL_KEYWORDS = ("loop", "max_thinking_tokens", "min_thinking_tokens", "max_answer_tokens", "language_guard")


@dataclass(frozen=True)
class RunSettings:
    """What to ask for, in the Python API's terms (None: the checkpoint's or the server's default). `controls`
    holds the reasoning-control keywords of `Model.params` (loop, max_thinking_tokens, min_thinking_tokens,
    max_answer_tokens, language_guard, language); `system` the system message (None: none sent)."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    seed: int | None = None
    max_tokens: int | None = None
    controls: dict[str, Any] = field(default_factory=dict)
    system: str | None = None

    def params(self, sample: int) -> dict[str, Any]:
        """`Model.params` keywords for sample number `sample` (seeded seed + sample, so samples differ)."""
        chosen = {
            "max_new_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "min_p": self.min_p,
            "seed": None if self.seed is None else self.seed + sample,
            **self.controls,
        }
        return {key: value for key, value in chosen.items() if value is not None}


def run_config(dataset: Dataset, backend: Backend, settings: RunSettings, options: DataOptions) -> dict[str, Any]:
    """The configuration a run's replies depend on (hashed into every record's key)."""
    data: dict[str, Any] = {}
    if dataset.name == "gpqa-diamond":
        data["shuffle_seed"] = options.shuffle_seed
    sampling = asdict(settings)
    controls, system = sampling.pop("controls"), sampling.pop("system")
    return {
        "benchmark": dataset.name,
        "task": dataset.task,
        "backend": backend.identity(),
        "sampling": {k: v for k, v in sampling.items() if k != "max_tokens"},
        "max_tokens": settings.max_tokens,
        "controls": {k: v for k, v in sorted(controls.items()) if v is not None},
        "system": system,
        "prompt_version": PROMPT_VERSION,
        "data": data,
    }


def config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]


class Grader(Protocol):
    def grade(self, item: Item, text: str) -> Verdict:
        """The verdict on `text`, the part of a reply that holds its answer."""
        ...


class TaskGrader:
    """The project's graders, imported when first used: maths and multiple choice by `qwq.eval.grading`, code
    by running it against the item's tests in the sandbox (`qwq.eval.code_check`)."""

    def grade(self, item: Item, text: str) -> Verdict:
        if item.task == "code":
            from qwq.eval.code_check import check_code

            return check_code(item, text)
        from qwq.eval.grading import extract_answer, grade

        prediction = extract_answer(text, item.task, question=item.prompt)
        return Verdict(grade(item.answer, prediction, item.task), prediction)


def answer_text(reply: Reply) -> str:
    """The text to grade: the answer; a reply whose reasoning was never closed but that ended by itself (a model
    that boxed its answer without a Final Answer heading) is graded whole; a cut-off one has none."""
    if reply.answer.strip():
        return reply.answer
    return reply.text if reply.finish_reason == "stop" else ""


@dataclass
class Progress:
    """How a run stands, after each sample: `done` of `total` samples, `resumed` of them from an earlier run,
    `correct` and `no_answer` counts and `tokens` generated in this run, `record` the sample just logged."""

    total: int
    resumed: int
    done: int = 0
    correct: int = 0
    no_answer: int = 0
    tokens: int = 0
    started: float = field(default_factory=time.perf_counter)
    record: dict[str, Any] | None = None

    @property
    def new(self) -> int:
        return self.done - self.resumed


@dataclass(frozen=True)
class RunResult:
    config_hash: str
    samples_path: Path
    total: int
    resumed: int
    new: int


def completed_keys(path: Path, config: str) -> set[tuple[str, str, int]]:
    """(benchmark, item, sample) of the samples of configuration `config` already logged; a failed sample
    (finish reason error) does not count, so it is tried again."""
    if not path.exists():
        return set()
    return {
        (r["benchmark"], r["item"], r["sample"])
        for r in read_records(path, tolerate_torn_end=True)
        if r.get("config") == config and r.get("finish_reason") != "error"
    }


def record_of(item: Item, sample: int, config: str, job: Job, reply: Reply, verdict: Verdict) -> dict[str, Any]:
    no_answer = verdict.prediction is None or reply.finish_reason in CUT_OFF
    return {
        "benchmark": item.benchmark,
        "item": item.id,
        "sample": sample,
        "config": config,
        "task": item.task,
        "system": next((m["content"] for m in job.messages if m["role"] == "system"), None),
        "prompt": item.prompt,
        "gold": item.answer,
        "reply": reply.text,
        "reasoning": reply.reasoning,
        "answer": reply.answer,
        "prediction": verdict.prediction,
        "correct": bool(verdict.correct and not no_answer),
        "graded_correct": bool(verdict.correct),  # the grader's verdict before a cut-off reply is ruled wrong
        "no_answer": no_answer,
        "verdict": verdict.detail,
        "finish_reason": reply.finish_reason,
        "error": reply.error,
        "prompt_tokens": reply.prompt_tokens,
        "reasoning_tokens": reply.reasoning_tokens,
        "answer_tokens": reply.answer_tokens,
        "token_ids": reply.token_ids,
        "controls": reply.controls,
        "seconds": round(reply.seconds, 3),
        "meta": item.meta,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def write_config(out_dir: Path, digest: str, config: dict[str, Any], about: dict[str, Any]) -> None:
    """config.json: every configuration run in this folder by its hash (what the report describes)."""
    path = out_dir / CONFIG_FILE
    known = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    known[digest] = {**config, **about}
    out_dir.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(known, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    temporary.replace(path)


def run_eval(
    dataset: Dataset,
    backend: Backend,
    settings: RunSettings,
    out_dir: Path,
    *,
    samples: int = 1,
    options: DataOptions | None = None,
    grader: Grader | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    code_workers: int = 4,
) -> RunResult:
    """Run what is not yet done of `samples` samples of every item of `dataset` into `out_dir`."""
    config = run_config(dataset, backend, settings, options or DataOptions())
    digest = config_hash(config)
    about = {"title": dataset.title, "published": dataset.published, "source": dataset.source}
    write_config(out_dir, digest, config, about)
    path = out_dir / SAMPLES_FILE
    done = completed_keys(path, digest)
    todo = [(item, k) for item in dataset.items for k in range(samples) if (item.benchmark, item.id, k) not in done]
    total = len(dataset.items) * samples
    progress = Progress(total=total, resumed=total - len(todo), done=total - len(todo))
    jobs = [Job(messages(item.prompt, settings.system), settings.params(k)) for item, k in todo]
    grader = grader or TaskGrader()
    with open_for_append(path) as log, ThreadPoolExecutor(code_workers, thread_name_prefix="qwq-grade") as pool:
        graded: list[Future[dict[str, Any]]] = []

        def finish(record: dict[str, Any]) -> None:
            append_record(log, record)
            progress.done += 1
            progress.correct += record["correct"]
            progress.no_answer += record["no_answer"]
            progress.tokens += record["reasoning_tokens"] + record["answer_tokens"]
            progress.record = record
            if on_progress is not None:
                on_progress(progress)

        def drain(block: bool) -> None:
            for future in [f for f in graded if block or f.done()]:
                graded.remove(future)
                finish(future.result())

        def grade(index: int, reply: Reply) -> dict[str, Any]:
            item, sample = todo[index]
            text = answer_text(reply)
            verdict = grader.grade(item, text) if text.strip() else Verdict(False, None, "no answer in the reply")
            return record_of(item, sample, digest, jobs[index], reply, verdict)

        if on_progress is not None:
            on_progress(progress)  # where the run starts: its size and what is already done
        try:
            for index, reply in backend.run(jobs):
                if todo[index][0].task == "code":  # runs a program: off the thread that feeds the engine
                    graded.append(pool.submit(grade, index, reply))
                else:
                    finish(grade(index, reply))
                drain(block=False)
        finally:
            drain(block=True)  # replies already generated are graded and logged, even on Ctrl+C
    return RunResult(digest, path, total, progress.resumed, progress.new)


def latest_records(path: Path) -> Iterable[dict[str, Any]]:
    """The log's records, the last one of each (benchmark, item, sample, config) only (a retried sample)."""
    latest: dict[tuple[Any, ...], dict[str, Any]] = {}
    for record in read_records(path, tolerate_torn_end=True):
        latest[(record.get("benchmark"), record.get("item"), record.get("sample"), record.get("config"))] = record
    return latest.values()
