"""What a pull reports as it goes, in ollama's terms (the status lines of `/api/pull`): the manifest, each
file's digest with its total and completed bytes, the checksum step, success. The CLI draws them as a bar
with speed and ETA (plain lines off a terminal); the server streams them as NDJSON."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

PULLING_MANIFEST = "pulling manifest"
VERIFYING = "verifying sha256 digest"
WRITING_MANIFEST = "writing manifest"
SUCCESS = "success"


@dataclass(frozen=True)
class PullProgress:
    """One step: a status line and, while a file is fetched, its digest and bytes (total known up front)."""

    status: str
    digest: str | None = None
    total: int | None = None
    completed: int | None = None

    def as_json(self) -> dict[str, str | int]:
        return {key: value for key, value in asdict(self).items() if value is not None}


PullListener = Callable[[PullProgress], None]


def ignore(_: PullProgress) -> None:
    """The listener of a pull nobody watches."""
