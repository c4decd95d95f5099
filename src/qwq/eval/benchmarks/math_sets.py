r"""The maths benchmarks: MATH-500, AIME 2024, AIME 2025 and AMC 2023. Each record is a problem and a final
answer; the prompt asks for the answer in \boxed{} (prompts.py)."""

from __future__ import annotations

from typing import Any

from qwq.eval.benchmarks.spec import Benchmark, DataOptions, Records, need, record_id
from qwq.eval.hub_data import hub_rows
from qwq.eval.prompts import math_prompt
from qwq.eval.types import Item

_META_FIELDS = ("subject", "level", "contest", "year", "url")
_TABLES = ("*.jsonl", "*.parquet")  # a dataset repository stores its rows as either


def _answer_text(answer: Any) -> str:
    """A gold answer as text: AMC 2023 stores its answers as JSON numbers (27.0), written here as integers."""
    if isinstance(answer, float) and answer.is_integer():
        return str(int(answer))
    return str(answer).strip()


def _items(benchmark: str):
    def items(records: Records, options: DataOptions) -> list[Item]:
        found = []
        for index, record in enumerate(records):
            problem = need(record, index, "problem", "question", "Problem")
            answer = _answer_text(need(record, index, "answer", "Answer"))
            meta = {key: record[key] for key in _META_FIELDS if record.get(key) not in (None, "")}
            if "level" in meta:
                meta["level"] = str(meta["level"])
            item_id = record_id(record, index, "unique_id", "id", "problem_idx", "ID")
            found.append(Item(benchmark, item_id, "math", math_prompt(str(problem)), answer, None, meta))
        return found

    return items


def _fetch(repo: str, *patterns: str):
    def fetch(options: DataOptions) -> tuple[list[dict[str, Any]], str]:
        return hub_rows(repo, patterns, token=options.hf_token)

    return fetch


MATH500 = Benchmark(
    "math500",
    "MATH-500",
    "math",
    ("math500.jsonl",),
    _items("math500"),
    _fetch("HuggingFaceH4/MATH-500", "test.jsonl"),
    90.6,
)
AIME24 = Benchmark(
    "aime24",
    "AIME 2024",
    "math",
    ("aime24.jsonl",),
    _items("aime24"),
    _fetch("HuggingFaceH4/aime_2024", *_TABLES),
    50.0,
)
AIME25 = Benchmark(
    "aime25", "AIME 2025", "math", ("aime25.jsonl",), _items("aime25"), _fetch("MathArena/aime_2025", *_TABLES)
)
AMC23 = Benchmark("amc23", "AMC 2023", "math", ("amc23.jsonl",), _items("amc23"), _fetch("math-ai/amc23", *_TABLES))
MATH_SETS = (MATH500, AIME24, AIME25, AMC23)
