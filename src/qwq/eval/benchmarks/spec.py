"""What a benchmark is to the runner: its task, the local file names it is stored under, how its records become
Items, how its official set is fetched from the Hub, and the published score it is compared with."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date
from typing import Any

from qwq.errors import InvalidRequestError
from qwq.eval.types import Item, Task


@dataclass(frozen=True)
class DataOptions:
    """Choices that change which items a benchmark yields or how they are worded: the base seed of option
    shuffles (GPQA), a Hub token (gated sets), LiveCodeBench's release and contest-date window."""

    shuffle_seed: int = 0
    hf_token: str | None = None
    release: str = "release_v5"
    since: date | None = None
    until: date | None = None


Records = Iterable[dict[str, Any]]


@dataclass(frozen=True)
class Benchmark:
    """One benchmark. `items` turns records in the local file's layout into Items; `fetch` returns the official
    set's records in that same layout and where they came from. `published`: QwQ-32B-Preview's score in its
    release article, in percent, where it gave one."""

    name: str
    title: str
    task: Task
    local_files: tuple[str, ...]
    items: Callable[[Records, DataOptions], list[Item]]
    fetch: Callable[[DataOptions], tuple[list[dict[str, Any]], str]] | None = None
    published: float | None = None


def need(record: dict[str, Any], index: int, *names: str) -> Any:
    """The first of `names` the record has (not None), or an error naming the record and field."""
    for name in names:
        if record.get(name) is not None:
            return record[name]
    raise InvalidRequestError(f"record {index + 1} has no {' or '.join(repr(n) for n in names)} field", field="data")


def record_id(record: dict[str, Any], index: int, *names: str) -> str:
    """A record's stable id from the first of `names` it has, else its position."""
    for name in names:
        if record.get(name) not in (None, ""):
            return str(record[name])
    return str(index)


def item_seed(base: int, item_id: str) -> int:
    """A per-item seed that depends only on the base seed and the id (not on order, limit or Python's hash
    salt), so a shuffle is the same in every run and recorded with the item."""
    return int.from_bytes(hashlib.sha256(f"{base}:{item_id}".encode()).digest()[:8], "big")
