"""The evaluation harness's shared types: a benchmark item, a model's reply to it, and the grader's verdict.

Every benchmark (one file each under `qwq.eval.benchmarks`) turns its records into Items; the runner turns
Items into prompts and Replies; the graders (`grading.py` for math and multiple choice, `code_check.py` for
code) turn a Reply into a Verdict. Kept small, as simple-evals keeps its shared types.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Task = Literal["math", "mcq", "code"]
TASKS: tuple[str, ...] = ("math", "mcq", "code")


@dataclass(frozen=True)
class Item:
    """One problem. `prompt` is the user message exactly as the published evaluation words it; `answer` is
    the gold (maths: the final answer as LaTeX/text; mcq: the letter; code: empty). `tests`: for code, the
    checker's input ({"kind": "humaneval", "test": ..., "entry_point": ...} or {"kind": "stdin"|"call",
    "cases": [{"input": ..., "output": ...}], "fn_name": ...}). `meta`: subject, level, difficulty, ... (the
    report's breakdowns)."""

    benchmark: str
    id: str
    task: Task
    prompt: str
    answer: str = ""
    tests: dict[str, Any] | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Verdict:
    """The grade of one reply: `prediction` is the answer the reply commits to (None when it gives none: cut
    off, looping, or never stating one), `correct` whether it matches the gold, `detail` why (for the logs)."""

    correct: bool
    prediction: str | None
    detail: str = ""
