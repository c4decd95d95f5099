"""`qwq run` as a user runs it: a real subprocess, stdout for the answer, one-line errors with exit codes."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _qwq(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qwq.cli.main", *args], input=stdin, capture_output=True, text=True, timeout=600
    )


def test_one_shot_answer_on_stdout(gguf_path):
    result = _qwq(
        "run",
        str(gguf_path),
        "What is 7 times 6? Reply with only the number.",
        "--temperature",
        "0",
        "--max-tokens",
        "8",
    )
    assert result.returncode == 0, result.stderr
    assert "42" in result.stdout


def test_prompt_from_stdin(gguf_path):
    result = _qwq(
        "run",
        str(gguf_path),
        "--temperature",
        "0",
        "--max-tokens",
        "8",
        stdin="What is 2+3? Reply with only the number.",
    )
    assert result.returncode == 0, result.stderr
    assert "5" in result.stdout


@pytest.mark.parametrize(
    ("args", "stdin", "code", "message"),
    [
        (("run", "/nonexistent/model.gguf", "hi"), None, 1, "no such file or directory"),
        (("run", "qwq-32b-preview", "hi"), None, 1, "preset without local weights"),
        (("run", "/nonexistent/model.gguf"), "   ", 2, "no prompt given"),
    ],
)
def test_errors_are_one_line_without_traceback(args, stdin, code, message):
    result = _qwq(*args, stdin=stdin)
    assert result.returncode == code
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stdout == ""
