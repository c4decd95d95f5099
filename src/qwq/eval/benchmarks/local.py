r"""Any local JSON Lines file as a benchmark (`--data FILE --task math|mcq|code`). The fields:

- math: `id`, `problem` (or `question`), `answer`; optional `subject`, `level`, `difficulty`, `category`.
- mcq: `id`, `question`, `answer` (a letter, or a 0-based option number); `choices` (a list of strings or of
  {"label", "text"}) lettered A, B, ... — or no `choices`, the options already lettered in the question.
- code: `id`, `prompt` (a function stub, HumanEval style: with `test` and `entry_point`) or `question` (a
  problem statement, LiveCodeBench style: with `tests`, a list of {"input", "output"}, and for call-based
  problems `fn_name` and `starter_code`). `tests` may also be a whole checker input (a dict with "kind").
"""

from __future__ import annotations

import re
from typing import Any

from qwq.errors import InvalidRequestError
from qwq.eval.benchmarks.spec import DataOptions, Records, need, record_id
from qwq.eval.prompts import (
    LETTERS,
    humaneval_prompt,
    livecodebench_prompt,
    math_prompt,
    mcq_instruction,
    mcq_prompt,
)
from qwq.eval.types import Item, Task

_META_FIELDS = ("subject", "level", "difficulty", "category", "domain")
_LETTERED = re.compile(r"^\s*\(?([A-J])[).:]\s", re.MULTILINE)


def _meta(record: dict[str, Any]) -> dict[str, Any]:
    return {key: str(record[key]) for key in _META_FIELDS if record.get(key) not in (None, "")}


def _mcq(name: str, record: dict[str, Any], index: int) -> Item:
    question = str(need(record, index, "question"))
    answer = need(record, index, "answer")
    choices = record.get("choices")
    if choices:
        texts = [c["text"] if isinstance(c, dict) else str(c) for c in choices]
        labels = [str(c["label"]) if isinstance(c, dict) else LETTERS[i] for i, c in enumerate(choices)]
        prompt = mcq_prompt(question, texts)
    else:
        labels = _LETTERED.findall(question)
        if len(labels) < 2:
            raise InvalidRequestError(f"record {index + 1}: no `choices` and no lettered options in the question")
        prompt = f"{mcq_instruction(''.join(labels))}\n\n{question.strip()}"
    if isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < len(labels):
        letter = LETTERS[answer] if choices else labels[answer]
    elif str(answer).strip() in labels:
        position = labels.index(str(answer).strip())
        letter = LETTERS[position] if choices else labels[position]
    else:
        raise InvalidRequestError(f"record {index + 1}: answer {answer!r} is not one of {labels}", field="data")
    return Item(name, record_id(record, index, "id"), "mcq", prompt, letter, None, _meta(record))


def _code(name: str, record: dict[str, Any], index: int) -> Item:
    tests = record.get("tests")
    if record.get("prompt") is not None and record.get("entry_point") is not None:
        stub = str(record["prompt"])
        test = str(need(record, index, "test"))
        checker = {"kind": "humaneval", "test": test, "entry_point": str(record["entry_point"]), "prompt": stub}
        item_id = record_id(record, index, "id", "task_id")
        return Item(name, item_id, "code", humaneval_prompt(stub), "", checker, _meta(record))
    question = str(need(record, index, "question", "prompt"))
    starter = str(record.get("starter_code") or "")
    if isinstance(tests, dict) and "kind" in tests:
        checker = tests
    elif isinstance(tests, list) and tests:
        kind = "call" if record.get("fn_name") else "stdin"
        checker = {"kind": kind, "cases": [{"input": t["input"], "output": t["output"]} for t in tests]}
        checker["fn_name"] = record.get("fn_name")
    else:
        raise InvalidRequestError(f"record {index + 1}: a code item needs `tests` (or `test` and `entry_point`)")
    prompt = livecodebench_prompt(question, starter)
    return Item(name, record_id(record, index, "id"), "code", prompt, "", checker, _meta(record))


def local_items(name: str, task: Task, records: Records, options: DataOptions) -> list[Item]:
    """Items of benchmark `name` from records in the generic layout above."""
    found = []
    for index, record in enumerate(records):
        if task == "math":
            problem = str(need(record, index, "problem", "question"))
            answer = str(need(record, index, "answer")).strip()
            item = Item(name, record_id(record, index, "id"), "math", math_prompt(problem), answer, None, _meta(record))
        elif task == "mcq":
            item = _mcq(name, record, index)
        else:
            item = _code(name, record, index)
        found.append(item)
    return found
