"""The interactive `qwq run` in a real pseudo-terminal (pexpect): streamed answers, /set, /show, multi-line
input, Ctrl+C mid-answer keeping the session, errors that leave the session running, /bye and Ctrl+D."""

from __future__ import annotations

import os
import sys

import pexpect
import pytest

from cli_process import home_sharing_kernels

PROMPT = ">>>"


@pytest.fixture
def chat(gguf_path, tmp_path):
    child = pexpect.spawn(
        sys.executable,
        ["-m", "qwq.cli.main", "run", str(gguf_path), "--ctx", "2048"],
        env={**os.environ, "QWQ_HOME": str(home_sharing_kernels(tmp_path, gguf_path))},
        encoding="utf-8",
        timeout=120,
        dimensions=(40, 200),
    )
    child.expect(PROMPT)
    yield child
    child.close(force=True)


def _say(child: pexpect.spawn, line: str, expect: str) -> str:
    child.sendline(line)
    child.expect(expect)
    seen = child.before + child.after
    child.expect(PROMPT)
    return seen


def test_conversation_with_settings_interrupt_and_bye(chat, tmp_path):
    _say(chat, "/set parameter temperature 0", "Set parameter 'temperature' to '0'")
    _say(chat, "What is 7 times 6? Reply with only the number.", "42")
    # The conversation is kept: a follow-up refers to the previous answer.
    _say(chat, "Now multiply that number by 2. Reply with only the number.", "84")

    chat.sendline("Write a very long story about a dragon named Zephyr, at least 2000 words.")
    chat.expect_exact("2000 words.")  # the echo of the line typed
    chat.expect(r"\w+\W+\w+\W+\w+\W+\w+")  # the answer is streaming
    chat.expect(r"\w+\W+\w+\W+\w+\W+\w+")  # and still streaming
    chat.sendcontrol("c")
    chat.expect(r"\(answer stopped\)", timeout=30)
    chat.expect(PROMPT)

    info = _say(chat, "/show info", "vocabulary")
    assert "qwen2 (24 layers)" in info and "2048" in info
    chat.sendline('"""')
    chat.expect(r"\.\.\.")
    chat.sendline("What is 3 plus 4?")
    chat.expect(r"\.\.\.")
    chat.sendline('Reply with only the number."""')
    chat.expect("7")
    chat.expect(PROMPT)
    chat.sendline("/bye")
    chat.expect(pexpect.EOF)
    chat.close()
    assert chat.exitstatus == 0
    history = (tmp_path / "history").read_text()
    assert "What is 7 times 6?" in history  # arrow-key history persists


BAD_LINES = [
    ("/set parameter temprature 0", "error: unknown parameter 'temprature'"),
    ("/set parameter top_p 7", r"error: top_p must be a number in \[0.0, 1.0\], got 7.0"),
    ("/set parameter top_k many", "error: top_k must be int, got 'many'"),
    (
        "/set parameter num_ctx 99999999",
        r"error: num_ctx must be between 1 and the loaded context of 2048 \(load with a larger --ctx\), got 99999999",
    ),
    ("/set parameter num_predict 0", "error: num_predict must be a positive integer or -1"),
    ("/set parameter", "error: usage: /set parameter NAME VALUE"),
    ('/set system "unclosed', "error: cannot parse"),
    ("/frobnicate", "error: unknown command '/frobnicate'"),
    ("/show nothing", "error: usage: /show"),
]


def test_commands_errors_and_ctrl_c_at_the_prompt_then_ctrl_d(chat):
    """One session (the model loads once): /set parameter takes the controls too and /show parameters lists
    them; bad commands are one-line errors and the session goes on; Ctrl+C at the prompt keeps the session;
    Ctrl+D leaves."""
    _say(chat, "/set parameter think_budget 64", "Set parameter 'think_budget' to '64'")
    _say(chat, "/set parameter loop stop", "Set parameter 'loop' to 'stop'")
    shown = _say(chat, "/show parameters", "language_guard")
    assert "think_budget" in shown and "64" in shown and "stop" in shown
    _say(chat, "/set parameter loop sometimes", "error: loop must be one of recover, stop, off")
    _say(chat, "/set parameter think_budget none", "Set parameter 'think_budget' to 'none'")

    for line, message in BAD_LINES:
        seen = _say(chat, line, message)
        assert "Traceback" not in seen
    _say(chat, "/set parameter seed 3", "Set parameter 'seed' to '3'")
    _say(chat, "/clear", "Cleared session context")

    chat.sendcontrol("c")
    chat.expect("Use Ctrl \\+ d or /bye to exit.")
    chat.expect(PROMPT)
    _say(chat, '/set system "You are terse."', "Set system message.")
    _say(chat, "/show system", "You are terse.")
    chat.sendcontrol("d")
    chat.expect(pexpect.EOF)
    chat.close()
    assert chat.exitstatus == 0
