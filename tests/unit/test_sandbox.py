"""The sandbox contains what model-written code may do (loop, eat memory, fork without end, write outside its
scratch directory, open a connection, flood its output) as a failed run, and the harness carries on."""

from __future__ import annotations

import json
import secrets
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from qwq.eval import sandbox
from qwq.eval.sandbox import UID_BASE, SandboxLimits, run_python

SMALL = SandboxLimits(wall_seconds=2.0, cpu_seconds=2, memory_bytes=256 << 20, processes=8, output_bytes=64 << 10)
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def namespaces() -> str:
    """The isolation in force, for the tests that only namespaces can pass."""
    mode = sandbox._detect_isolation()
    if mode == "rlimits":
        pytest.skip("no namespaces here: writes outside the scratch directory and fork bombs are not contained")
    return mode


@pytest.fixture
def rlimits_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "_detect_isolation", lambda: "rlimits")


def still_works() -> None:
    result = run_python("print(input()[::-1])", "abc", limits=SMALL)
    assert result.ok, result
    assert result.stdout == "cba\n"


def sandbox_processes() -> list[str]:
    """Processes left running as a sandbox uid."""
    left = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            uid_line = next(line for line in status.read_text().splitlines() if line.startswith("Uid:"))
        except (OSError, StopIteration):
            continue  # it ended while we looked
        if int(uid_line.split()[1]) > UID_BASE:
            left.append(status.parent.name)
    return left


def test_a_normal_run_reads_stdin_and_reports_its_exit() -> None:
    result = run_python("import sys\nname = input()\nprint('hello', name)\nprint('note', file=sys.stderr)", "qwq\n")
    assert (result.returncode, result.stdout, result.stderr) == (0, "hello qwq\n", "note\n")
    assert result.ok and not (result.timed_out or result.memory_exceeded or result.output_truncated)
    assert result.isolation == sandbox._detect_isolation()
    assert run_python("exit(3)", limits=SMALL).returncode == 3  # exit() exists although site is not imported
    failed = run_python("raise ValueError('boom')", limits=SMALL)
    assert failed.returncode == 1 and not failed.ok
    assert failed.stderr.strip().endswith("ValueError: boom")


def test_the_environment_is_cleared_and_home_is_the_scratch_directory() -> None:
    result = run_python("import os, json\nprint(json.dumps([sorted(os.environ), os.environ['HOME'], os.getcwd()]))")
    names, home, cwd = json.loads(result.stdout)
    assert names == ["HOME", "LANG", "PATH", "TMPDIR"]
    assert home == cwd


def test_an_infinite_loop_is_killed_at_the_wall_clock_limit() -> None:
    started = time.monotonic()
    result = run_python("while True:\n    pass", limits=SandboxLimits(wall_seconds=1.0, cpu_seconds=30))
    assert result.timed_out and not result.ok
    assert result.returncode == -signal.SIGKILL
    assert time.monotonic() - started < 1.0 + sandbox.EXIT_GRACE_SECONDS
    still_works()


def test_the_cpu_limit_stops_a_busy_program_before_the_wall_clock() -> None:
    result = run_python("while True:\n    pass", limits=SandboxLimits(wall_seconds=20.0, cpu_seconds=1))
    assert result.timed_out and result.returncode == -signal.SIGXCPU
    assert result.seconds < 10


@pytest.mark.parametrize(
    "code",
    ["x = bytearray(1 << 40)", "chunks = []\nwhile True:\n    chunks.append(bytearray(1 << 20))"],
    ids=["one-huge", "growing"],
)
def test_a_memory_bomb_fails_as_memory_exceeded(code: str) -> None:
    result = run_python(code, limits=SMALL)
    assert result.memory_exceeded and not result.ok
    still_works()


def test_a_fork_bomb_is_contained_and_leaves_nothing_behind(namespaces: str) -> None:
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    with ThreadPoolExecutor(4) as pool:  # runs beside the bomb get processes of their own
        exploding = pool.submit(run_python, bomb, limits=SMALL)
        time.sleep(0.5)
        roomy = SandboxLimits(wall_seconds=20.0)  # the bomb keeps the CPUs busy
        beside = [pool.submit(run_python, "print(6 * 7)", limits=roomy) for _ in range(3)]
        assert [f.result().stdout for f in beside] == ["42\n"] * 3
        result = exploding.result()
    assert result.timed_out and not result.ok
    if namespaces == "namespaces":
        assert sandbox_processes() == []
    still_works()


def test_forking_stops_at_the_process_limit(namespaces: str) -> None:
    code = (
        "import os, time\nmade = 0\ntry:\n    while True:\n        if os.fork() == 0:\n"
        "            time.sleep(30)\n            os._exit(0)\n        made += 1\nexcept OSError as exc:\n"
        "    print(made, exc.errno)"
    )
    result = run_python(code, limits=SMALL)
    made, errno = map(int, result.stdout.split())
    assert made < SMALL.processes and errno == 11  # EAGAIN from RLIMIT_NPROC, not the timeout
    assert result.seconds < SMALL.wall_seconds  # its sleeping children died with it


def test_a_background_child_does_not_outlive_the_program(namespaces: str) -> None:
    code = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\nprint('parent done')"
    result = run_python(code, limits=SMALL)
    assert result.ok and result.stdout == "parent done\n" and not result.timed_out
    if namespaces == "namespaces":
        assert sandbox_processes() == []


def test_writes_outside_the_scratch_directory_fail(namespaces: str) -> None:
    token = secrets.token_hex(6)
    targets = [Path(f"/tmp/qwq-escape-{token}"), REPO / f"qwq-escape-{token}", Path(f"/dev/shm/qwq-escape-{token}")]
    for target in targets:
        result = run_python(f"open({str(target)!r}, 'w').write('escaped')", limits=SMALL)
        assert result.returncode == 1 and "OSError" in result.stderr, (target, result)
        assert not target.exists()
    inside = run_python("open('notes.txt', 'w').write('fine')\nprint(open('notes.txt').read())", limits=SMALL)
    assert inside.ok and inside.stdout == "fine\n"
    still_works()


def test_the_scratch_disk_and_file_size_are_capped(namespaces: str) -> None:
    one_file = run_python("open('big', 'wb').write(b'x' * (64 << 20))", limits=SMALL)
    assert one_file.returncode == 1 and "File too large" in one_file.stderr
    limits = SandboxLimits(disk_bytes=8 << 20, file_bytes=4 << 20)
    many = run_python("for i in range(3):\n    open(f'part{i}', 'wb').write(b'x' * (4 << 20))", limits=limits)
    assert many.returncode == 1 and "No space left on device" in many.stderr


def test_signals_reach_nothing_outside(namespaces: str) -> None:
    code = "import os, signal\ntry:\n    os.kill(-1, signal.SIGKILL)\nexcept OSError:\n    pass"
    result = run_python(code, limits=SMALL)
    assert not result.timed_out
    still_works()


def _no_connection_arrives(server: socket.socket) -> bool:
    server.settimeout(0.3)
    try:
        connection, _ = server.accept()
    except TimeoutError:
        return True
    connection.close()
    return False


@pytest.mark.parametrize("mode", ["detected", "rlimits"])
def test_no_connection_reaches_a_local_listener(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if mode == "rlimits":
        monkeypatch.setattr(sandbox, "_detect_isolation", lambda: "rlimits")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        code = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1).sendall(b'escaped')"
        result = run_python(code, limits=SMALL)
        assert result.returncode == 1 and not result.ok
        assert ("PermissionError" if mode == "rlimits" else "OSError") in result.stderr
        assert _no_connection_arrives(server)
    still_works()


def test_a_gigabyte_of_output_is_cut_at_the_cap_and_killed() -> None:
    code = "import sys\nfor _ in range(1 << 14):\n    sys.stdout.write('x' * (1 << 16))"
    result = run_python(code, limits=SMALL)
    assert result.output_truncated and not result.ok
    assert len(result.stdout) == SMALL.output_bytes
    assert result.seconds < SMALL.wall_seconds
    one_print = run_python("print('x' * 10**9)", limits=SMALL)  # the string alone passes the memory limit
    assert not one_print.ok and (one_print.memory_exceeded or one_print.output_truncated)
    still_works()


def test_unread_stdin_does_not_block() -> None:
    result = run_python("print('ignored my input')", "x" * (1 << 20), limits=SMALL)
    assert result.ok and result.stdout == "ignored my input\n"


def test_runs_go_in_parallel(namespaces: str) -> None:
    code = "import os, time\ntime.sleep(1)\nprint(os.getuid())"
    started = time.monotonic()
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _: run_python(code, limits=SandboxLimits(wall_seconds=10.0)), range(6)))
    assert all(r.ok for r in results)
    assert time.monotonic() - started < 6 * 1 - 1  # one after another they would take 6 s
    if namespaces == "namespaces":  # each concurrent run has a uid of its own
        assert len({r.stdout for r in results}) == 6


def test_rlimits_fallback_still_limits_time_and_output(rlimits_only: None) -> None:
    result = run_python("print(input())", "plain", limits=SMALL)
    assert result.ok and result.stdout == "plain\n" and result.isolation == "rlimits"
    assert run_python("while True:\n    pass", limits=SandboxLimits(wall_seconds=1.0)).timed_out
    assert run_python("while True:\n    print('x' * 4096)", limits=SMALL).output_truncated
    assert run_python("bytearray(1 << 40)", limits=SMALL).memory_exceeded
