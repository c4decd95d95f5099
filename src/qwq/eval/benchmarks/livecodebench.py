"""LiveCodeBench code generation (the `code_generation_lite` rows): stdin/stdout problems (AtCoder, Codeforces)
and call-based ones (LeetCode, with starter code and a function name). Hidden tests are stored as JSON or as
base64(zlib(pickle(json text))); the pickle is read with an unpickler that admits no classes, so a hostile file
cannot run code. Releases and a contest-date window pick the problems, as LiveCodeBench's own runner does.
"""

from __future__ import annotations

import base64
import io
import json
import pickle
import re
import zlib
from datetime import date, datetime
from typing import Any

from qwq.errors import InvalidRequestError
from qwq.eval.benchmarks.spec import Benchmark, DataOptions, Records, need, record_id
from qwq.eval.hub_data import hub_rows, repo_files
from qwq.eval.prompts import livecodebench_prompt
from qwq.eval.types import Item

HUB_REPO = "livecodebench/code_generation_lite"


class _DataOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from test data")


def decode_tests(text: str | None) -> list[dict[str, Any]]:
    """A test-case field: a JSON list, or the compressed form of one."""
    if not text:
        return []
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    try:
        inner = _DataOnly(io.BytesIO(zlib.decompress(base64.b64decode(text)))).load()
        return json.loads(inner)
    except (ValueError, zlib.error, pickle.UnpicklingError, EOFError, TypeError) as exc:
        raise InvalidRequestError(f"test cases are neither JSON nor compressed JSON ({exc})", field="data") from None


def _contest_day(record: dict[str, Any]) -> date | None:
    value = record.get("contest_date")
    return datetime.fromisoformat(str(value)).date() if value not in (None, "") else None


def _in_window(day: date | None, options: DataOptions) -> bool:
    if options.since is None and options.until is None:
        return True
    if day is None:
        return False  # a problem with no date cannot be placed in a window
    return (options.since is None or day >= options.since) and (options.until is None or day <= options.until)


def livecodebench_items(records: Records, options: DataOptions) -> list[Item]:
    found = []
    for index, record in enumerate(records):
        day = _contest_day(record)
        if not _in_window(day, options):
            continue
        public = decode_tests(record.get("public_test_cases"))
        private = decode_tests(record.get("private_test_cases"))
        cases = public + private
        if not cases:
            raise InvalidRequestError(f"record {index + 1} has no test cases", field="data")
        metadata = record.get("metadata") or "{}"
        metadata = json.loads(metadata) if isinstance(metadata, str) else metadata
        call = cases[0].get("testtype") == "functional"
        tests = {
            "kind": "call" if call else "stdin",
            "cases": [{"input": c["input"], "output": c["output"]} for c in cases],
            "fn_name": metadata.get("func_name"),
        }
        meta: dict[str, Any] = {"public_tests": len(public), "private_tests": len(private)}
        for key in ("difficulty", "platform"):
            if record.get(key):
                meta[key] = record[key]
        if day is not None:
            meta["contest_date"] = day.isoformat()
        if record.get("_synthetic"):
            meta["synthetic"] = True
        item_id = record_id(record, index, "question_id")
        if record.get("question_id") in (None, "") and record.get("_source_index") is not None:
            item_id = f"lcb-{record['_source_index']}"
        prompt = livecodebench_prompt(str(need(record, index, "question_content")), record.get("starter_code") or "")
        found.append(Item("livecodebench", item_id, "code", prompt, "", tests, meta))
    return found


def release_files(release: str, available: list[str]) -> list[str]:
    """The hub files of a release: release_vN is test.jsonl and test2..testN.jsonl, vN only the Nth file,
    vA_vB files A to B, release_latest every one."""
    numbered = {1 if m.group(1) == "" else int(m.group(1)): name for name in available if (m := _FILE.fullmatch(name))}
    if release == "release_latest":
        chosen = sorted(numbered)
    elif m := re.fullmatch(r"release_v(\d+)", release):
        chosen = list(range(1, int(m.group(1)) + 1))
    elif m := re.fullmatch(r"v(\d+)(?:_v(\d+))?", release):
        chosen = list(range(int(m.group(1)), int(m.group(2) or m.group(1)) + 1))
    else:
        raise InvalidRequestError(f"unknown LiveCodeBench release {release!r} (release_v5, v6, v4_v5, ...)")
    missing = [n for n in chosen if n not in numbered]
    if missing:
        raise InvalidRequestError(f"{HUB_REPO} has no file for {release!r} (files: {sorted(numbered.values())})")
    return [numbered[n] for n in chosen]


_FILE = re.compile(r"test(\d*)\.jsonl")


def _fetch(options: DataOptions) -> tuple[list[dict[str, Any]], str]:
    files = release_files(options.release, repo_files(HUB_REPO, token=options.hf_token))
    return hub_rows(HUB_REPO, (), token=options.hf_token, files=files)


LIVECODEBENCH = Benchmark(
    "livecodebench",
    "LiveCodeBench",
    "code",
    ("livecodebench.jsonl", "livecodebench_public_subset.jsonl"),
    livecodebench_items,
    _fetch,
    50.0,
)
