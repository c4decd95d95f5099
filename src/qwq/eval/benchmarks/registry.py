"""The benchmarks by name, and loading one: a named benchmark from its local file (searched for in the data
folders) or else from the Hub; any file in a named benchmark's layout (`BENCH --data FILE`); or a file in the
generic layout of a task (`--data FILE --task T`, local.py)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from qwq.errors import InvalidRequestError, QwqError
from qwq.eval.benchmarks.commonsense import COMMONSENSE
from qwq.eval.benchmarks.gpqa import GPQA_DIAMOND
from qwq.eval.benchmarks.humaneval import HUMANEVAL
from qwq.eval.benchmarks.livecodebench import LIVECODEBENCH
from qwq.eval.benchmarks.local import local_items
from qwq.eval.benchmarks.math_sets import MATH_SETS
from qwq.eval.benchmarks.spec import Benchmark, DataOptions
from qwq.eval.data_dir import find_data_file, search_dirs
from qwq.eval.hub_data import read_rows
from qwq.eval.types import TASKS, Item, Task

logger = logging.getLogger(__name__)

BENCHMARKS: dict[str, Benchmark] = {
    b.name: b for b in (*MATH_SETS, GPQA_DIAMOND, LIVECODEBENCH, HUMANEVAL, *COMMONSENSE)
}


@dataclass(frozen=True)
class Dataset:
    """A benchmark's items as loaded: `source` says from where (a file path or a Hub address)."""

    name: str
    title: str
    task: Task
    items: list[Item]
    source: str
    published: float | None = None


def load_dataset(
    name: str | None,
    *,
    data_file: Path | None = None,
    task: str | None = None,
    data_dir: Path | None = None,
    options: DataOptions | None = None,
) -> Dataset:
    """The items of benchmark `name` (or of `data_file` alone, with `task`)."""
    options = options or DataOptions()
    if name is None or name not in BENCHMARKS:
        if data_file is None:
            known = ", ".join(BENCHMARKS)
            raise InvalidRequestError(f"unknown benchmark {name!r}; choose one of {known}, or pass --data FILE --task")
        if task not in TASKS:
            raise InvalidRequestError(f"--data {data_file} needs --task, one of {', '.join(TASKS)}", field="task")
        label = name or data_file.stem
        items = _converted(data_file, lambda rows: local_items(label, task, rows, options))
        return Dataset(label, label, task, items, str(data_file))
    benchmark = BENCHMARKS[name]
    if task is not None and task != benchmark.task:
        raise InvalidRequestError(f"{name} is a {benchmark.task} benchmark, not {task}", field="task")
    path = data_file or find_data_file(benchmark.local_files, data_dir)
    if path is not None:
        items = _converted(path, lambda rows: benchmark.items(rows, options))
        source = str(path)
    elif benchmark.fetch is None:
        raise InvalidRequestError(f"no local file for {name} ({', '.join(benchmark.local_files)}) was found")
    else:
        folders = ", ".join(str(d) for d in search_dirs(data_dir))
        logger.info("no local %s in %s: fetching it from the Hub", " or ".join(benchmark.local_files), folders)
        rows, source = benchmark.fetch(options)
        items = benchmark.items(rows, options)
    if not items:
        raise InvalidRequestError(f"{name}: no items in {source} (check the date window or the file)")
    return Dataset(name, benchmark.title, benchmark.task, items, source, benchmark.published)


def _converted(path: Path, convert) -> list[Item]:
    """Records of a local file turned into Items, an error naming the file."""
    if not path.is_file():
        raise InvalidRequestError(f"{path}: no such data file", field="data")
    try:
        return convert(read_rows(path))
    except QwqError as exc:
        raise InvalidRequestError(f"{path}: {exc}", field="data") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidRequestError(f"{path}: a record is not in the expected layout ({exc!r})", field="data") from None
