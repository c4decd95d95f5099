"""The interactive `qwq run` in a real pseudo-terminal (pexpect), the habits ollama users bring: `/save NAME` and
`/load NAME` (the conversation goes on from the file, which holds it as JSON), `/set format json` (the reply
parses as one JSON object), `/set nothink` and `/set think` (the reasoning hidden, then shown again)."""

from __future__ import annotations

import json
import os
import re
import sys

import pexpect
import pytest

from cli_process import home_sharing_kernels

PROMPT = ">>> "
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _spawn(gguf_path, home, *arguments: str) -> pexpect.spawn:
    child = pexpect.spawn(
        sys.executable,
        ["-m", "qwq.cli.main", "run", str(gguf_path), "--ctx", "1024", "--temperature", "0", *arguments],
        env={**os.environ, "QWQ_HOME": str(home_sharing_kernels(home, gguf_path))},
        encoding="utf-8",
        timeout=180,
        dimensions=(40, 200),
    )
    child.expect(PROMPT)
    return child


def _leave(child: pexpect.spawn) -> None:
    """/bye, and the session's end (a loaded machine can take longer than pexpect's kill grace)."""
    if child.isalive():
        child.sendline("/bye")
        child.expect(pexpect.EOF, timeout=60)
    child.close()


@pytest.fixture
def chat(gguf_path, tmp_path):  # one session per test: each load of the model costs seconds on two cores
    child = _spawn(gguf_path, tmp_path)
    yield child
    _leave(child)


def _say(child: pexpect.spawn, line: str) -> str:
    """What the line got back, up to the next prompt, without the echo and the terminal's escapes."""
    child.sendline(line)
    child.expect_exact(line)
    child.expect_exact(PROMPT)
    return ANSI.sub("", child.before).replace("\r", "").strip()


def test_save_load_and_format_json(chat, tmp_path):
    assert "42" in _say(chat, "What is 7 times 6? Reply with only the number.")
    saved = _say(chat, "/save arithmetic")
    assert saved.startswith("Saved conversation 'arithmetic' (2 messages)")
    stored = json.loads((tmp_path / "conversations" / "arithmetic.json").read_text(encoding="utf-8"))
    assert [m["role"] for m in stored["messages"]] == ["user", "assistant"]
    assert "42" in stored["messages"][1]["content"]
    _say(chat, "/clear")
    assert _say(chat, "/load arithmetic") == "Loaded conversation 'arithmetic' (2 messages)"
    assert "84" in _say(chat, "Now multiply that number by 2. Reply with only the number.")
    assert "error: no conversation named 'other' (saved: arithmetic)" in _say(chat, "/load other")
    assert "is not a conversation name" in _say(chat, "/save ../outside")
    assert not (tmp_path / "outside.json").exists()
    # the same session (one model load): /set format json
    _say(chat, "/clear")
    assert _say(chat, "/set format json") == "Set format to 'json' mode."
    reply = _say(chat, "Describe a cat with a name and an age.")
    assert isinstance(json.loads(reply), dict), reply
    assert _say(chat, "/set noformat") == "Disabled format."
    assert "usage: /set parameter NAME VALUE" in _say(chat, "/set format yaml")


def test_nothink_hides_the_reasoning_and_think_shows_it(gguf_path, tmp_path):
    """QwQ-Preview's format forced on the small model makes its reply reasoning until the budget cues the answer."""
    child = _spawn(gguf_path, tmp_path, "--reasoning-format", "qwq-preview", "--think-budget", "12")
    try:
        question = "What is 17 times 23?"
        assert "Thinking..." in _say(child, question)
        assert _say(child, "/set nothink") == "Set 'nothink' mode."
        hidden = _say(child, question)
        assert "Thinking..." not in hidden and "done thinking" not in hidden
        assert _say(child, "/set think") == "Set 'think' mode."
        assert "Thinking..." in _say(child, question)
    finally:
        _leave(child)
