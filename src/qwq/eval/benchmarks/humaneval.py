"""HumanEval: 164 Python functions to complete from their signature and docstring, checked by each problem's
`check(candidate)` tests."""

from __future__ import annotations

from typing import Any

from qwq.eval.benchmarks.spec import Benchmark, DataOptions, Records, need, record_id
from qwq.eval.hub_data import hub_rows
from qwq.eval.prompts import humaneval_prompt
from qwq.eval.types import Item


def humaneval_items(records: Records, options: DataOptions) -> list[Item]:
    found = []
    for index, record in enumerate(records):
        stub = str(need(record, index, "prompt"))
        tests = {
            "kind": "humaneval",
            "test": str(need(record, index, "test")),
            "entry_point": str(need(record, index, "entry_point")),
            "prompt": stub,
        }
        item_id = record_id(record, index, "task_id")
        found.append(Item("humaneval", item_id, "code", humaneval_prompt(stub), "", tests, {}))
    return found


def _fetch(options: DataOptions) -> tuple[list[dict[str, Any]], str]:
    return hub_rows("openai/openai_humaneval", ("*test*.parquet", "*.jsonl"), token=options.hf_token)


HUMANEVAL = Benchmark("humaneval", "HumanEval", "code", ("humaneval.jsonl",), humaneval_items, _fetch)
