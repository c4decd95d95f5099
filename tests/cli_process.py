"""Running the `qwq` command as a user does (a subprocess): one-shot commands with their one-line errors, and
`qwq serve` on a free loopback port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

# The two 0.5B `qwq serve` processes the e2e modules share (tests/e2e/conftest.py starts each once): tests whose
# checks depend on a flag read it here. The plain one runs without a key; the web one reads replies in
# QwQ-Preview's format and wants a bearer key.
SHARED_CONTEXT, SHARED_MAX_BATCH, SHARED_MAX_QUEUE = 1024, 4, 8
WEB_CONTEXT = 2048
WEB_KEY = "web-key-456"


def home_sharing_kernels(home: Path, gguf_path: Path) -> Path:
    """`home` (a fresh QWQ_HOME) with the kernel builds of the test model's home: a quantized GGUF runs at its own
    bits on qwq's kernels by default, and building them in every fresh home takes minutes on a busy 2-core
    machine, past a test's wait for the prompt."""
    shared = gguf_path.parent.parent / "build"
    shared.mkdir(parents=True, exist_ok=True)
    if not (home / "build").exists():
        (home / "build").symlink_to(shared, target_is_directory=True)
    return home


def run_qwq(
    *args: str, stdin: str | None = None, home: Path | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    """`qwq ARGS...` with stdin, QWQ_HOME and extra environment variables; output captured as text."""
    environment = {**os.environ, **env}
    if home is not None:
        environment["QWQ_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "qwq.cli.main", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=600,
        env=environment,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], message: str, code: int = 1) -> None:
    """A failed command: the exit code, the message, one stderr line, no traceback, nothing on stdout."""
    assert result.returncode == code, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stdout == ""


@dataclass
class ServerProcess:
    """A running `qwq serve`: its base URL and its process (to signal it, or read its output once it ended)."""

    url: str
    process: subprocess.Popen[str]


@contextmanager
def server_process(*args: str, home: Path) -> Iterator[ServerProcess]:
    """`qwq serve ARGS... --port FREE` running until the block ends (or the caller stops it); yields it once
    /health answers."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "qwq.cli.main", "serve", *args, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "QWQ_HOME": str(home)},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert process.poll() is None, process.stdout.read()
            assert time.monotonic() < deadline, "qwq serve did not answer /health within 300 s"
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        yield ServerProcess(url, process)
    finally:
        process.terminate()
        process.wait(timeout=30)


@contextmanager
def live_server(*args: str, home: Path) -> Iterator[str]:
    """`qwq serve ARGS... --port FREE` running until the block ends; yields its base URL once /health answers."""
    with server_process(*args, home=home) as server:
        yield server.url
