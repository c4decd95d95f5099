"""The graders' front door: one answer extractor and one grader for maths and multiple choice, and
`score_records`, which is `qwq eval score` (replies in, verdicts out). Code is graded by running it, elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from qwq.errors import InvalidRequestError
from qwq.eval.choice_grading import extract_choice, grade_choice, parse_options
from qwq.eval.math_grading import extract_math_answer, grade_math

GRADED_TASKS = ("math", "mcq")


def _check_task(task: str) -> None:
    if task == "code":
        raise InvalidRequestError(
            "task 'code' is graded by running the code against its tests, not by its answer text", field="task"
        )
    if task not in GRADED_TASKS:
        raise InvalidRequestError(f"unknown task {task!r}: expected one of {', '.join(GRADED_TASKS)}", field="task")


def extract_answer(text: str, task: str, *, question: str | None = None) -> str | None:
    """The answer a reply commits to (maths: as written; mcq: a letter), or None when it commits to none.
    For mcq, `question` holds the lettered options, so a reply that states an option's text gets its letter."""
    _check_task(task)
    if task == "math":
        return extract_math_answer(text)
    options = parse_options(question) if question else None
    return extract_choice(text, options or None)


def grade(gold: str, prediction: str | None, task: str) -> bool:
    """Whether an extracted answer (None: no answer) matches the gold answer of a maths or mcq item."""
    _check_task(task)
    return grade_math(gold, prediction) if task == "math" else grade_choice(gold, prediction)


def _field(record: Any, number: int, name: str, kinds: tuple[type, ...]) -> Any:
    """A record's field, checked: the error names the record (its number and id) and the field."""
    where = f"record {number}"
    if not isinstance(record, dict):
        raise InvalidRequestError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if name != "id" and "id" in record:
        where += f" (id {record['id']!r})"
    if name not in record:
        raise InvalidRequestError(f"{where}: missing field {name!r}", field=name)
    value = record[name]
    if isinstance(value, bool) or not isinstance(value, kinds):
        expected = " or ".join(kind.__name__ for kind in kinds)
        raise InvalidRequestError(f"{where}: field {name!r} must be {expected}, got {value!r:.60}", field=name)
    return value


def _gold(value: str | int | float) -> str:
    """A gold answer as text; a whole-number JSON number (AMC's `27.0`) as `27`."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def score_records(records: Iterable[dict], task: str) -> Iterator[dict]:
    """Grade saved replies: each record's `response` (the whole reply, reasoning included, perhaps cut off)
    against its `answer`; yields `{"id", "prediction", "correct"}` per record, in order. Records are numbered
    from 1 (the line of a JSON Lines file). `question` is required for mcq (it holds the lettered options)."""
    _check_task(task)
    for number, record in enumerate(records, start=1):
        record_id = _field(record, number, "id", (str, int))
        gold = _gold(_field(record, number, "answer", (str, int, float)))
        response = _field(record, number, "response", (str,))
        question = _field(record, number, "question", (str,)) if task == "mcq" else None
        prediction = extract_answer(response, task, question=question)
        yield {"id": record_id, "prediction": prediction, "correct": grade(gold, prediction, task)}
