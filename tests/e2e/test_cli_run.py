"""`qwq run` as a user runs it: a real subprocess, stdout for the answer, one-line errors with exit codes."""

from __future__ import annotations

import pytest

from cli_process import assert_one_line_error
from cli_process import run_qwq as _qwq

QUESTION = "What is 7 times 6? Reply with only the number."
OPTIONS = ("--temperature", "0", "--max-tokens", "8")


def test_one_shot_answer_on_stdout(gguf_path):
    """The options may come after the prompt (before it, as with ollama: test_finish_reason_is_reported)."""
    result = _qwq("run", str(gguf_path), QUESTION, *OPTIONS)
    assert result.returncode == 0, result.stderr
    assert "42" in result.stdout


def test_the_words_are_the_prompt(gguf_path):
    """`qwq run MODEL what is 7 times 6`: unquoted words, before and after options, make the prompt (ollama)."""
    first, rest = QUESTION.split(" ", 1)
    result = _qwq("run", str(gguf_path), first, "--temperature", "0", *rest.split(), "--max-tokens", "8")
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
        (("run", "", "hi"), None, 1, "the model name is empty"),
    ],
)
def test_errors_are_one_line_without_traceback(args, stdin, code, message):
    assert_one_line_error(_qwq(*args, stdin=stdin), message, code)


def test_finish_reason_is_reported(gguf_path):
    """The engine's finish reason reaches the terminal: a reply cut at --max-tokens says so on stderr (the answer
    on stdout stays clean), --verbose names the reason, and an answer that ends by itself gets no note (its
    options come before the prompt, as with ollama)."""
    cut = _qwq("run", str(gguf_path), "--temperature", "0", "--max-tokens", "3", "--verbose", "Count from 1 to 50.")
    assert cut.returncode == 0, cut.stderr
    assert "qwq: cut off at the token limit: finish reason length" in cut.stderr
    assert "finish reason:        length" in cut.stderr
    assert "cut off" not in cut.stdout
    done = _qwq("run", str(gguf_path), *OPTIONS, "--verbose", QUESTION)
    assert done.returncode == 0, done.stderr
    assert "42" in done.stdout
    assert "finish reason:        stop" in done.stderr and "cut off" not in done.stderr


def test_bad_sampling_values_are_refused_before_loading():
    """The request is checked before the model is even looked for: a bad value is named first."""
    result = _qwq("run", "/nonexistent/model.gguf", "--temperature", "-1", "hi")
    assert_one_line_error(result, "temperature must be a number in [0.0, inf], got -1.0", 1)


def test_thinking_budget_transition_is_shown(gguf_path):
    """With QwQ-Preview's format forced on the small model its whole reply is reasoning (on stderr) until the
    budget cues the answer heading: the terminal says so, and the answer comes on stdout."""
    result = _qwq(
        "run",
        str(gguf_path),
        "--reasoning-format",
        "qwq-preview",
        "--temperature",
        "0",
        "--think-budget",
        "32",
        "--answer-budget",
        "16",
        "What is 17 times 23? Explain each step.",
    )
    assert result.returncode == 0, result.stderr
    assert "[thinking budget of 32 tokens reached — answering]" in result.stderr
    assert result.stdout.strip(), "no answer followed the budget's cue"


def test_bad_control_values_are_refused_before_loading():
    result = _qwq("run", "/nonexistent/model.gguf", "--think-budget", "0", "hi")
    assert_one_line_error(result, "--think-budget must be an integer at least 1, got 0", 1)
    result = _qwq("run", "/nonexistent/model.gguf", "--think-budget", "8", "--min-think", "9", "hi")
    assert_one_line_error(result, "--min-think (9) must not exceed --think-budget (8)", 1)
