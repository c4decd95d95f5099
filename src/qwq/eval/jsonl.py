"""JSON Lines as the harness reads and writes them: data files, and the run log that a crash may leave with a
torn last line (a record half written when the process died), which is dropped and cut off before appending.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from qwq.errors import InvalidRequestError

logger = logging.getLogger(__name__)


def read_records(path: Path, *, tolerate_torn_end: bool = False) -> Iterator[dict[str, Any]]:
    """The objects of a JSONL file, blank lines skipped. A line that is not a JSON object is an error naming
    the file and line, except the last line when `tolerate_torn_end` (a log cut short mid-write)."""
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidRequestError(f"{path}: cannot be read as UTF-8 text ({exc})", field="data") from None
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if tolerate_torn_end and number - 1 == last:
                logger.warning("%s: line %d is torn (%s); it is ignored", path, number, exc.msg)
                return
            raise InvalidRequestError(f"{path}, line {number}: not valid JSON ({exc.msg})", field="data") from None
        if not isinstance(record, dict):
            raise InvalidRequestError(f"{path}, line {number}: expected a JSON object", field="data")
        yield record


def open_for_append(path: Path) -> IO[str]:
    """`path` opened to append records, a torn last line (no final newline) cut off first so the next record
    starts on a line of its own."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            if _is_object(data[keep:]):  # complete but for its newline
                with path.open("ab") as handle:
                    handle.write(b"\n")
            else:
                logger.warning("%s: dropping a torn last line of %d bytes", path, len(data) - keep)
                with path.open("r+b") as handle:
                    handle.truncate(keep)
    return path.open("a", encoding="utf-8")


def _is_object(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False


def append_record(handle: IO[str], record: dict[str, Any]) -> None:
    """One record as one line, flushed and synced: a Ctrl+C or a crash loses no finished record."""
    handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    handle.flush()
    os.fsync(handle.fileno())
