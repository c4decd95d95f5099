"""`qwq pull`'s progress: on a terminal a bar per file with bytes, speed and time left; elsewhere (a log, a
pipe) plain lines, one per step and one every few seconds while bytes arrive, so a redirected pull is not
silent. A step's line is shown once the pull has moved past it: a pull that fails at a step ends with the
error's one line alone."""

from __future__ import annotations

import time
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from qwq.pull_progress import SUCCESS, PullProgress

PLAIN_EVERY_S = 5.0


class PullDisplay:
    """A listener for `qwq.store.pull`; use it as a context manager around the pull."""

    def __init__(self, stream: TextIO) -> None:
        self.console = Console(file=stream)
        self.plain = not self.console.is_terminal
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            disable=self.plain,
        )
        self._tasks: dict[str, TaskID] = {}
        self._started: dict[str, tuple[float, int]] = {}  # a file's first report: when, and bytes already there
        self._printed: dict[str, float] = {}
        self._pending: str | None = None  # the step in progress, shown once the next one begins

    def __enter__(self) -> PullDisplay:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def __call__(self, event: PullProgress) -> None:
        if self._pending is not None:
            self._say(self._pending)
            self._pending = None
        if event.total is None or event.completed is None:
            self._pending = event.status if event.status != SUCCESS else None
            return
        if self.plain:
            self._plain_bytes(event)
            return
        task = self._tasks.get(event.status)
        if task is None:
            task = self._tasks[event.status] = self.progress.add_task(event.status, total=event.total)
        self.progress.update(task, completed=event.completed)

    def _say(self, line: str) -> None:
        if self.plain:
            print(line, file=self.console.file, flush=True)
        else:
            self.progress.console.print(line)

    def _plain_bytes(self, event: PullProgress) -> None:
        now = time.monotonic()
        began, first = self._started.setdefault(event.status, (now, event.completed))
        done = event.completed >= event.total
        if not done and now - self._printed.get(event.status, 0.0) < PLAIN_EVERY_S:
            return
        if done and self._printed.get(event.status) == float("inf"):
            return
        self._printed[event.status] = float("inf") if done else now
        elapsed = now - began
        speed = (event.completed - first) / elapsed if elapsed > 0 else 0.0
        line = f"{event.status}: {event.completed / 1e6:.1f}/{event.total / 1e6:.1f} MB"
        line += f" ({100 * event.completed / event.total:.0f}%)" if event.total else ""
        if speed > 0:
            left = (event.total - event.completed) / speed
            line += f", {speed / 1e6:.1f} MB/s" + ("" if done else f", {left:.0f} s left")
        self._say(line)
