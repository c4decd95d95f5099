"""Running the `qwq` command as a user does (a subprocess) and checking its one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


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
