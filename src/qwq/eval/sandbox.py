"""Run untrusted Python (model-written code, for `qwq eval`) without Docker: a fresh process per run, in namespaces
of its own, under rlimits, with a wall-clock timeout and capped output. `sandbox_launcher.py` is the child side.

The isolation is chosen once per process, by a probe run, and every result names it:
- "namespaces" (the harness runs as root): no network (an empty network namespace), a read-only filesystem
  except a size-capped scratch tmpfs, a PID namespace (when the program ends or is killed, everything it
  started dies), and the program runs as an unprivileged uid of its own, so RLIMIT_NPROC (per uid, and not
  enforced for root) bounds a fork bomb without starving parallel runs. An interpreter under a directory
  that uid may not enter (pyenv's /root/.pyenv) is mounted back alone over an empty tmpfs at that directory.
- "user-namespaces" (not root, unprivileged user namespaces allowed): the same, the program running as the
  namespace's root stripped of every capability; RLIMIT_NPROC then counts the processes in the namespace.
- "rlimits" (neither works): rlimits, a Python-level socket guard, cwd, HOME and TMPDIR in a scratch directory
  that is deleted afterwards. Writes elsewhere are not blocked, and when the harness is root neither is a
  fork bomb (RLIMIT_NPROC does not apply to root); only the timeout and the process-group kill end it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

from qwq.errors import QwqError

logger = logging.getLogger(__name__)

LAUNCHER = Path(__file__).with_name("sandbox_launcher.py")
UID_BASE = 2_000_000_000  # sandbox uids (one per concurrent run), far above any account's
EXIT_GRACE_SECONDS = 5.0  # for the launcher to report after the program ends or is killed
_CHUNK = 1 << 16
_MEMORY_ERROR = re.compile(r"^MemoryError\b", re.MULTILINE)


class SandboxError(QwqError):
    """The sandbox itself failed (could not start or set up a run); nothing the program does raises it."""


@dataclass(frozen=True)
class SandboxLimits:
    """Per-run limits. `processes` counts threads and the program itself; `memory_bytes` is address space per
    process (so a forking program may use up to `processes` times it); `disk_bytes` caps the scratch tmpfs and
    `file_bytes` any one file; `output_bytes` caps stdout and stderr each (the run is killed past it)."""

    wall_seconds: float = 10.0
    cpu_seconds: int = 10
    memory_bytes: int = 1 << 30
    processes: int = 16
    file_bytes: int = 16 << 20
    disk_bytes: int = 64 << 20
    open_files: int = 64
    output_bytes: int = 1 << 20


DEFAULT_LIMITS = SandboxLimits()


@dataclass(frozen=True)
class SandboxResult:
    """How a run ended. `returncode` is negative when a signal killed the program (the wall-clock timeout and
    the output cap kill with SIGKILL); `timed_out` covers the wall clock and the CPU limit; `stdout` and
    `stderr` are decoded as UTF-8 (bad bytes replaced) and cut at the output cap."""

    returncode: int
    stdout: str
    stderr: str
    timed_out: bool
    memory_exceeded: bool
    output_truncated: bool
    seconds: float
    isolation: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not (self.timed_out or self.memory_exceeded or self.output_truncated)


class _UidPool:
    """Hands out the sandbox uids. A uid whose run could not be ended cleanly is never handed out again."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._free: list[int] = []
        self._next = UID_BASE

    def take(self) -> int:
        with self._lock:
            if self._free:
                return self._free.pop()
            self._next += 1
            return self._next

    def give(self, uid: int) -> None:
        with self._lock:
            self._free.append(uid)


_UIDS = _UidPool()


def run_python(code: str, stdin: str = "", *, limits: SandboxLimits = DEFAULT_LIMITS) -> SandboxResult:
    """Run `code` as a Python program (standard library only) with `stdin` as its input. Whatever the program
    does, this returns a result; SandboxError means the sandbox could not be set up. Thread-safe."""
    return _run(code, stdin, limits, _detect_isolation())


@cache
def _detect_isolation() -> str:
    """The strongest isolation that works here, found by a probe run (once per process)."""
    mode = "namespaces" if os.geteuid() == 0 else "user-namespaces"
    try:
        probe = _run("print('ok')", "", SandboxLimits(wall_seconds=30.0), mode)
        if probe.ok and probe.stdout == "ok\n":
            return mode
        reason = f"exit {probe.returncode}: {probe.stderr.strip()[-300:]}"
    except SandboxError as exc:
        reason = str(exc)
    logger.warning("sandbox: %s isolation unavailable (%s); falling back to rlimits only", mode, reason)
    return "rlimits"


def _hidden_prefix() -> tuple[str, str] | None:
    """(the first directory on the way to the interpreter's prefix that others may not enter, the prefix), or
    None when the sandbox uid can reach the interpreter as it is (e.g. /usr)."""
    prefix = os.path.realpath(sys.base_prefix)
    path = "/"
    for part in Path(prefix).parts[1:]:
        path = os.path.join(path, part)
        if not os.stat(path).st_mode & 0o001:
            return path, prefix
    return None


def _run(code: str, stdin: str, limits: SandboxLimits, mode: str) -> SandboxResult:
    uid = _UIDS.take() if mode == "namespaces" else os.getuid()
    ended_cleanly = False
    try:
        with tempfile.TemporaryDirectory(prefix="qwq-sandbox-", ignore_cleanup_errors=True) as tmp:
            result, ended_cleanly = _run_in(Path(tmp), code, stdin.encode(), limits, mode, uid)
            return result
    finally:
        if mode == "namespaces" and ended_cleanly:
            _UIDS.give(uid)


def _run_in(
    root: Path, code: str, stdin: bytes, limits: SandboxLimits, mode: str, uid: int
) -> tuple[SandboxResult, bool]:
    root.chmod(0o755)  # the sandbox uid reads the program from here
    program = root / "main.py"
    program.write_text(code, encoding="utf-8")
    work = root / "work"
    staging = root / "python"
    work.mkdir()
    staging.mkdir()
    hide = _hidden_prefix() if mode == "namespaces" else None
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(work), "TMPDIR": str(work)}
    status_r, status_w = os.pipe()
    config = {
        "mode": mode,
        "uid": uid,
        "gid": uid,
        "work": str(work),
        "program": str(program),
        "interpreter": os.path.realpath(sys.executable),
        "hide": [*hide, str(staging)] if hide else None,
        "limits": asdict(limits),
        "env": env,
        "status_fd": status_w,
    }
    (root / "launch.json").write_text(json.dumps(config))
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-B", str(LAUNCHER), str(root / "launch.json")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=(status_w,),
            cwd=root,
            env=env,
            start_new_session=True,
        )
    except OSError as exc:
        os.close(status_r)
        raise SandboxError(f"could not start the sandbox launcher: {exc}") from exc
    finally:
        os.close(status_w)
    with proc, os.fdopen(status_r, "rb") as status_file:
        out, err, status, stop = _collect(proc, status_file.fileno(), stdin, limits)
        ended_cleanly = _finish(proc, stop)
        status += _drain(status_file.fileno())
    reports = [json.loads(line) for line in status.decode().splitlines() if line.strip()]
    errors = [r["error"] for r in reports if "error" in r]
    if errors:
        raise SandboxError(errors[0])
    waits = [r["wait_status"] for r in reports if "wait_status" in r]
    returncode = os.waitstatus_to_exitcode(waits[0]) if waits else -signal.SIGKILL
    stderr = err.decode("utf-8", "replace")
    result = SandboxResult(
        returncode=returncode,
        stdout=out.decode("utf-8", "replace"),
        stderr=stderr,
        timed_out=stop == "timeout" or returncode == -signal.SIGXCPU,
        memory_exceeded=returncode != 0 and bool(_MEMORY_ERROR.search(stderr[-4096:])),
        output_truncated=stop == "output",
        seconds=time.monotonic() - started,
        isolation=mode,
    )
    return result, ended_cleanly


def _collect(
    proc: subprocess.Popen[bytes], status_fd: int, stdin: bytes, limits: SandboxLimits
) -> tuple[bytes, bytes, bytes, str | None]:
    """Feed stdin and read stdout, stderr and the launcher's reports until all close, the wall clock runs out
    ("timeout") or an output passes its cap ("output"); reading as it comes, so no pipe fills and blocks."""
    assert proc.stdin and proc.stdout and proc.stderr  # Popen was given three pipes
    buffers = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray(), status_fd: bytearray()}
    pending = memoryview(stdin)
    stdin_fd = proc.stdin.fileno()
    deadline = time.monotonic() + limits.wall_seconds
    stop = None
    with selectors.DefaultSelector() as selector:
        for fd in buffers:
            os.set_blocking(fd, False)
            selector.register(fd, selectors.EVENT_READ)
        if pending:
            os.set_blocking(stdin_fd, False)
            selector.register(stdin_fd, selectors.EVENT_WRITE)
        else:
            proc.stdin.close()
        while selector.get_map() and stop is None:
            left = deadline - time.monotonic()
            if left <= 0:
                stop = "timeout"
                break
            for key, _ in selector.select(left):
                if key.fd == stdin_fd:
                    try:
                        pending = pending[os.write(stdin_fd, pending[:_CHUNK]) :]
                    except BrokenPipeError:  # the program exited or closed stdin without reading it all
                        pending = pending[:0]
                    if not pending:
                        selector.unregister(stdin_fd)
                        proc.stdin.close()
                    continue
                data = os.read(key.fd, _CHUNK)
                if not data:
                    selector.unregister(key.fd)
                    continue
                buffer = buffers[key.fd]
                buffer += data
                if key.fd != status_fd and len(buffer) > limits.output_bytes:
                    del buffer[limits.output_bytes :]
                    stop = "output"
    with contextlib.suppress(BrokenPipeError):
        proc.stdin.close()
    return bytes(buffers[proc.stdout.fileno()]), bytes(buffers[proc.stderr.fileno()]), bytes(buffers[status_fd]), stop


def _drain(fd: int) -> bytes:
    """What is left in a non-blocking pipe, without waiting for a writer that may never close it."""
    data = b""
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(fd, _CHUNK):
            data += chunk
    return data


def _finish(proc: subprocess.Popen[bytes], stop: str | None) -> bool:
    """End the run and reap the launcher; True when it ended on its own terms (not SIGKILLed by us).

    The launcher's pid is only reaped at the end, so until then its process group id cannot be reused and
    the group kill (for stragglers in "rlimits" mode) reaches only this run."""
    if stop is not None:
        os.kill(proc.pid, signal.SIGTERM)  # the launcher kills the program and reports
    ended = _exits_within(proc.pid, EXIT_GRACE_SECONDS)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return ended


def _exits_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)
    return True
