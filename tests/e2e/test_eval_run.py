"""`qwq eval run` with the real 0.5B model, kept tiny: MATH-500 through the CLI (a subprocess) in-process and
again (it resumes: no new sample), the same against a live `qwq serve` on loopback (the same replies and
verdicts at temperature 0), and one GPQA-format and one HumanEval item through the Python API, graded by the
real graders (the HumanEval and LiveCodeBench replies run in the sandbox); a run killed mid-way resumes."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from qwq.eval.backends import EngineBackend
from qwq.eval.benchmarks.registry import load_dataset
from qwq.eval.jsonl import read_records
from qwq.eval.runner import RunSettings, run_eval

from cli_process import assert_one_line_error, run_qwq

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
MODEL = "qwen2.5-coder:0.5b"
MATH = ("math500", "--limit", "2", "--max-tokens", "32", "--temperature", "0", "--data-dir", str(DATA))


def _records(out: Path) -> list[dict]:
    return list(read_records(out / "samples.jsonl"))


@pytest.fixture(scope="module")
def in_process(tmp_path_factory, gguf_path) -> Path:
    out = tmp_path_factory.mktemp("eval") / "in-process"
    result = run_qwq("eval", "run", *MATH, "--model", MODEL, "--out", str(out), home=gguf_path.parent.parent)
    assert result.returncode == 0, result.stderr
    assert "MATH-500: 2 new samples, 0 resumed" in result.stdout
    assert "(QwQ-32B-Preview published 90.6%)" in result.stdout
    return out


def test_a_run_logs_every_sample_and_writes_the_report(in_process):
    records = _records(in_process)
    first_two = [item.id for item in load_dataset("math500", data_dir=DATA).items[:2]]
    assert sorted(r["item"] for r in records) == sorted(first_two)
    for record in records:
        assert record["benchmark"] == "math500" and record["sample"] == 0 and record["task"] == "math"
        assert record["prompt"].endswith(r"put your final answer within \boxed{}.")
        assert record["finish_reason"] in ("stop", "length") and record["answer_tokens"] <= 32
        assert len(record["token_ids"]) == record["reasoning_tokens"] + record["answer_tokens"]
        assert record["prompt_tokens"] > 20 and record["reply"]
        if record["finish_reason"] == "length":
            assert record["no_answer"] and not record["correct"]
    for name in ("report.md", "report.html", "summary.json", "config.json"):
        assert (in_process / name).is_file()
    assert len(list((in_process / "plots").glob("*.png"))) == 2
    page = (in_process / "report.html").read_text(encoding="utf-8")
    assert "MATH-500" in page and "90.6%" in page and "data:image/png;base64," in page


def test_the_same_command_again_resumes_with_no_new_sample(in_process, gguf_path):
    again = run_qwq("eval", "run", *MATH, "--model", MODEL, "--out", str(in_process), home=gguf_path.parent.parent)
    assert again.returncode == 0, again.stderr
    assert "MATH-500: 0 new samples, 2 resumed" in again.stdout
    assert "MATH-500: 2 samples, 2 already done" in again.stderr and "loading" not in again.stderr  # no weights read
    assert len((in_process / "samples.jsonl").read_text(encoding="utf-8").splitlines()) == 2


def test_a_live_server_gives_the_in_process_replies(in_process, plain_server, gguf_path, tmp_path):
    """The package's plain server (tests/e2e/conftest.py) answers as the in-process run did."""
    where = ("--endpoint", plain_server, "--model", MODEL, "--out", str(tmp_path))
    over_http = run_qwq("eval", "run", *MATH, *where, home=gguf_path.parent.parent)
    assert over_http.returncode == 0, over_http.stderr
    local = {r["item"]: r for r in _records(in_process)}
    remote = {r["item"]: r for r in _records(tmp_path)}
    assert local.keys() == remote.keys()
    for item, record in remote.items():
        mine = local[item]
        for key in ("reply", "answer", "prediction", "correct", "no_answer", "finish_reason", "prompt_tokens"):
            assert record[key] == mine[key], (item, key)
        assert record["answer_tokens"] == mine["answer_tokens"] and record["token_ids"] is None
    [summary] = json.loads((tmp_path / "summary.json").read_text())
    assert summary["config"]["backend"]["backend"] == "endpoint" and summary["loop_checked"] == 2  # re-tokenized


def test_a_killed_run_resumes_without_redoing_finished_samples(plain_server, gguf_path, tmp_path):
    """SIGKILL mid-run (no handler runs): the samples logged so far are kept, and the same command again runs
    only the rest. The run asks the package's plain server, so neither run loads the weights."""
    home, out = gguf_path.parent.parent, tmp_path / "killed"
    command = [sys.executable, "-m", "qwq.cli.main", "eval", "run", "math500", "--limit", "3", "--concurrency", "1"]
    command += ["--max-tokens", "12", "--temperature", "0", "--data-dir", str(DATA), "--model", MODEL]
    command += ["--endpoint", plain_server, "--out", str(out), "--no-report"]
    process = subprocess.Popen(
        command, env={**os.environ, "QWQ_HOME": str(home)}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    samples = out / "samples.jsonl"
    deadline = time.monotonic() + 300
    try:
        while not (samples.is_file() and samples.read_bytes().count(b"\n") >= 1):
            assert process.poll() is None and time.monotonic() < deadline, "the run ended before a sample was logged"
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    before = [line for line in samples.read_text(encoding="utf-8").splitlines() if line.endswith("}")]
    assert 1 <= len(before) < 3
    again = run_qwq(*command[3:], home=home)
    assert again.returncode == 0, again.stderr
    kept = len(before)
    assert f"MATH-500: {3 - kept} new samples, {kept} resumed" in again.stdout
    records = _records(out)
    assert len(records) == 3 and len({r["item"] for r in records}) == 3
    assert [json.loads(line) for line in before] == records[:kept]  # the finished ones untouched
    health = httpx.get(f"{plain_server}/health", timeout=15).json()
    assert (health["running"], health["waiting"]) == (0, 0), health  # the killed run's request was cancelled


def _one(name: str, **where) -> object:
    dataset = load_dataset(name, **where)
    return dataclasses.replace(dataset, items=dataset.items[:1])


def test_gpqa_format_and_humaneval_items_run_and_are_graded(model, tmp_path):
    backend = EngineBackend.of(model, MODEL)
    gpqa = _one("gpqa-diamond", data_file=DATA / "gpqa_format_sample.jsonl")
    run_eval(gpqa, backend, RunSettings(temperature=0, max_tokens=32), tmp_path / "gpqa")
    [record] = _records(tmp_path / "gpqa")
    assert record["gold"] in "ABCD" and record["meta"]["shuffle_seed"] == gpqa.items[0].meta["shuffle_seed"]
    assert record["prediction"] is None or record["prediction"] in "ABCD"
    assert record["correct"] == (record["prediction"] == record["gold"] and record["finish_reason"] == "stop")

    humaneval = _one("humaneval", data_dir=DATA)
    run_eval(humaneval, backend, RunSettings(temperature=0, max_tokens=192), tmp_path / "humaneval")
    [record] = _records(tmp_path / "humaneval")
    assert record["finish_reason"] == "stop" and "def has_close_elements" in record["prediction"]
    assert record["verdict"] and record["correct"] == (record["verdict"] == "passed")  # the sandbox ran it

    livecodebench = _one("livecodebench", data_file=DATA / "livecodebench_format_sample.jsonl")
    run_eval(livecodebench, backend, RunSettings(temperature=0, max_tokens=160), tmp_path / "livecodebench")
    [record] = _records(tmp_path / "livecodebench")
    assert "Standard Input" in record["prompt"] and record["task"] == "code"
    assert record["verdict"]  # checked against every case in the sandbox (or no code block: no answer)
    assert record["correct"] is False or record["verdict"] == "passed"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("eval", "run", "math5000", "--model", MODEL), "unknown benchmark 'math5000'"),
        (("eval", "run", "math500"), "name a model to load (--model NAME|PATH) or a server to ask"),
        (("eval", "run", "math500", "--model", MODEL, "--samples", "0"), "--samples must be at least 1"),
        (("eval", "run", "--data", "/nonexistent.jsonl", "--task", "math", "--model", MODEL), "no such data file"),
        (("eval", "report", "/nonexistent-run"), "no samples.jsonl"),
    ],
)
def test_eval_errors_are_one_line(args, message):
    assert_one_line_error(run_qwq(*args), message)
