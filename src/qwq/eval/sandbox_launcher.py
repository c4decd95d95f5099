"""The child side of the sandbox (`sandbox.py` is the harness side): run as `python -I -S sandbox_launcher.py
CONFIG`, it enters fresh namespaces and forks an init for them, which forks the program and reports how it ended.

Standard library only, since it runs without site-packages. In "namespaces" mode (the harness is root) it
unshares mount, network, PID and IPC namespaces; makes every mount read-only and nosuid; mounts a size-capped
tmpfs as the only writable directory and a /proc of the new PID namespace; and in the program's process sets
rlimits, drops to the run's own unprivileged uid and sets no_new_privs before exec. In "user-namespaces" mode
(not root) a user namespace makes the same possible, and the program, root of that namespace, gives up every
capability before exec, so it cannot make the mounts writable again. In "rlimits" mode there are no
namespaces: rlimits only, plus a Python-level guard that makes sockets fail. The launcher stays outside the
program's PID namespace, where the program cannot signal it; on SIGTERM it kills the init, and with it every
process in the namespace.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import resource
import signal
import sys
from typing import Any, NoReturn

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_SECUREBITS = 28
PR_SET_NO_NEW_PRIVS = 38
SECBIT_NOROOT = 0x1  # uid 0 gains no capabilities at exec
SECBIT_NOROOT_LOCKED = 0x2
SYS_MOUNT_SETATTR = 442  # the same number on every architecture (a syscall added after 5.0)
AT_FDCWD = -100
AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2

_libc = ctypes.CDLL(None, use_errno=True)

# `-S` leaves exit() and quit() out of builtins, and model-written code calls them.
_RUNNER = """\
import builtins, runpy, sys
builtins.exit = builtins.quit = sys.exit
{guard}sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""

# Without a network namespace: best effort only (ctypes or _socket.socketpair get round it).
_SOCKET_GUARD = """\
import _socket, socket
class _NoNetwork(_socket.socket):
    def __init__(self, *args, **kwargs):
        raise PermissionError(1, "network access is disabled in this sandbox")
def _no_network(*args, **kwargs):
    raise PermissionError(1, "network access is disabled in this sandbox")
_socket.socket = socket.socket = socket.SocketType = _NoNetwork
socket.socketpair = socket.create_connection = socket.create_server = socket.fromfd = _no_network
_socket.socketpair = socket.getaddrinfo = _socket.getaddrinfo = _no_network
del _socket, socket, _NoNetwork, _no_network
"""


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _c_string(text: str | None) -> bytes | None:
    return text.encode() if text is not None else None


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    args = (_c_string(source), _c_string(target), _c_string(fstype), ctypes.c_ulong(flags), _c_string(data))
    _check(_libc.mount(*args), f"mount {target}")


def _prctl(option: int, value: int) -> None:
    # The kernel reads every argument as an unsigned long: pass them so, not as C ints.
    _check(_libc.prctl(option, ctypes.c_ulong(value), *[ctypes.c_ulong(0)] * 3), f"prctl {option}")


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _enter_namespaces(cfg: dict[str, Any]) -> None:
    """Unshare (the PID namespace takes effect for the next fork) and build the filesystem view."""
    userns = cfg["mode"] == "user-namespaces"
    uid, gid = os.getuid(), os.getgid()
    flags = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | (CLONE_NEWUSER if userns else 0)
    _check(_libc.unshare(flags), "unshare")
    if userns:
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"0 {uid} 1")
        _write("/proc/self/gid_map", f"0 {gid} 1")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    if cfg["hide"]:
        # The interpreter lies under a directory the run's uid may not enter (/root): cover that directory
        # with an empty tmpfs (its contents stay hidden) and put only the interpreter's prefix back.
        hidden, prefix, staging = cfg["hide"]
        _mount(prefix, staging, None, MS_BIND | MS_REC)
        _mount("tmpfs", hidden, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m")
        os.makedirs(prefix, exist_ok=True)
        _mount(staging, prefix, None, MS_MOVE)
    attr = _MountAttr(attr_set=MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID)
    args = (
        ctypes.c_int(AT_FDCWD),
        b"/",
        ctypes.c_uint(AT_RECURSIVE),
        ctypes.byref(attr),
        ctypes.c_size_t(ctypes.sizeof(attr)),
    )
    _check(_libc.syscall(ctypes.c_long(SYS_MOUNT_SETATTR), *args), "mount_setattr /")
    owner = "" if userns else f",uid={cfg['uid']},gid={cfg['gid']}"
    _mount(
        "tmpfs",
        cfg["work"],
        "tmpfs",
        MS_NOSUID | MS_NODEV,
        f"size={cfg['limits']['disk_bytes']},nr_inodes=16384,mode=0700{owner}",
    )


def _set_limits(limits: dict[str, int]) -> None:
    for which, value in (
        (resource.RLIMIT_CPU, limits["cpu_seconds"]),
        (resource.RLIMIT_AS, limits["memory_bytes"]),
        (resource.RLIMIT_NPROC, limits["processes"]),
        (resource.RLIMIT_FSIZE, limits["file_bytes"]),
        (resource.RLIMIT_NOFILE, limits["open_files"]),
        (resource.RLIMIT_CORE, 0),
    ):
        # CPU: SIGXCPU at the soft limit, SIGKILL a second later if the program catches that.
        resource.setrlimit(which, (value, value + 1 if which == resource.RLIMIT_CPU else value))


def _drop_capabilities() -> None:
    """The user namespace's root must not keep its capabilities (it could make the mounts writable again):
    empty the bounding set and lock uid 0 out of the capabilities exec would give it."""
    cap = 0
    with contextlib.suppress(OSError):  # EINVAL past the last capability
        while True:
            _prctl(PR_CAPBSET_DROP, cap)
            cap += 1
    _prctl(PR_SET_SECUREBITS, SECBIT_NOROOT | SECBIT_NOROOT_LOCKED)


def _become_program(cfg: dict[str, Any]) -> NoReturn:
    """In the program's process: set the limits, give up privileges, exec the interpreter."""
    mode = cfg["mode"]
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    _set_limits(cfg["limits"])
    if mode == "namespaces":
        os.setgroups([])
        os.setresgid(cfg["gid"], cfg["gid"], cfg["gid"])
        os.setresuid(cfg["uid"], cfg["uid"], cfg["uid"])
    elif mode == "user-namespaces":
        _drop_capabilities()
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    os.chdir(cfg["work"])
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    runner = _RUNNER.format(guard=_SOCKET_GUARD if mode == "rlimits" else "")
    exe = cfg["interpreter"]
    os.execve(exe, [exe, "-I", "-S", "-B", "-c", runner, cfg["program"]], cfg["env"])


def _run_init(cfg: dict[str, Any], status_fd: int) -> NoReturn:
    """PID 1 of the new PID namespace: start the program, reap whatever it leaves, report how it ended, exit
    (which kills everything left in the namespace). The program is not PID 1 itself because the kernel drops
    default-action signals sent to a namespace's init: SIGXCPU from the CPU limit, a program's kill of itself."""
    try:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if cfg["mode"] != "rlimits":
            # A /proc that shows only this namespace; a kernel may refuse (a masked /proc), then the old one stays.
            with contextlib.suppress(OSError):
                _mount("proc", "/proc", "proc", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
        program = os.fork()
        if program == 0:
            _become_program(cfg)
    except BaseException as exc:  # anything before exec is a setup failure, to report
        _report(status_fd, error=f"sandbox setup failed: {exc}")
        os._exit(126)
    while True:
        pid, wait_status = os.waitpid(-1, 0)
        if pid == program:
            _report(status_fd, wait_status=wait_status)
            os._exit(0)


def _report(fd: int, **fields: Any) -> None:
    os.write(fd, (json.dumps(fields) + "\n").encode())


def main(config_path: str) -> NoReturn:
    with open(config_path) as f:
        cfg = json.load(f)
    status_fd = cfg["status_fd"]
    os.set_inheritable(status_fd, False)  # the program must not hold it
    try:
        if cfg["mode"] != "rlimits":
            _enter_namespaces(cfg)
    except OSError as exc:
        _report(status_fd, error=f"sandbox setup failed: {exc}")
        os._exit(125)
    # SIGTERM (from the harness) kills the namespace's init; blocked across fork so the handler has its pid.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    init = os.fork()
    if init == 0:
        _run_init(cfg, status_fd)
    exited = False

    def kill_init(signum: int, frame: object) -> None:
        if not exited:  # until it exits (and is reaped) its pid cannot be another process's
            os.kill(init, signal.SIGKILL)

    signal.signal(signal.SIGTERM, kill_init)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    os.waitid(os.P_PID, init, os.WEXITED | os.WNOWAIT)
    exited = True
    os.waitpid(init, 0)
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1])
