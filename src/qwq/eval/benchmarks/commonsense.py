"""Common-sense multiple choice: CommonsenseQA (5 options), WinoGrande (2: which fills the blank) and PIQA (2:
which solution achieves the goal). Asked in the same lettered format as GPQA, so one grader reads them all."""

from __future__ import annotations

from typing import Any

from qwq.errors import InvalidRequestError
from qwq.eval.benchmarks.spec import Benchmark, DataOptions, Records, need, record_id
from qwq.eval.hub_data import hub_rows
from qwq.eval.prompts import LETTERS, mcq_prompt
from qwq.eval.types import Item


def _labelled(choices: Any) -> list[tuple[str, str]]:
    """(label, text) pairs from the local layout (a list of {"label", "text"}) or the Hub's ({"label": [...],
    "text": [...]})."""
    if isinstance(choices, dict):
        return list(zip(choices["label"], choices["text"], strict=True))
    return [(c["label"], c["text"]) for c in choices]


def commonsenseqa_items(records: Records, options: DataOptions) -> list[Item]:
    found = []
    for index, record in enumerate(records):
        labelled = _labelled(need(record, index, "choices"))
        labels = [label for label, _ in labelled]
        answer = str(need(record, index, "answer", "answerKey")).strip()
        if answer not in labels:
            raise InvalidRequestError(f"record {index + 1}: answer {answer!r} is not one of {labels}", field="data")
        letter = LETTERS[labels.index(answer)]
        prompt = mcq_prompt(str(need(record, index, "question")), [text for _, text in labelled])
        found.append(Item("commonsenseqa", record_id(record, index, "id"), "mcq", prompt, letter))
    return found


def _two_way(benchmark: str, record: dict[str, Any], index: int, question: str, options: list[str], gold: int) -> Item:
    if gold not in (0, 1):
        raise InvalidRequestError(f"record {index + 1}: the answer must name option 1 or 2", field="data")
    return Item(benchmark, record_id(record, index, "id", "qID"), "mcq", mcq_prompt(question, options), LETTERS[gold])


def winogrande_items(records: Records, options: DataOptions) -> list[Item]:
    found = []
    for index, record in enumerate(records):
        sentence = str(need(record, index, "sentence"))
        question = f"Which option correctly fills the blank (_) in this sentence?\n\n{sentence}"
        choices = [str(need(record, index, "option1")), str(need(record, index, "option2"))]
        gold = int(str(need(record, index, "answer")) or 0) - 1  # "1" or "2"
        found.append(_two_way("winogrande", record, index, question, choices, gold))
    return found


def piqa_items(records: Records, options: DataOptions) -> list[Item]:
    found = []
    for index, record in enumerate(records):
        question = f"Which solution achieves the goal?\n\nGoal: {need(record, index, 'goal')}"
        choices = [str(need(record, index, "sol1")), str(need(record, index, "sol2"))]
        found.append(_two_way("piqa", record, index, question, choices, int(need(record, index, "label"))))
    return found


def _fetch(repo: str, *patterns: str, revision: str | None = None):
    def fetch(options: DataOptions) -> tuple[list[dict[str, Any]], str]:
        return hub_rows(repo, patterns, revision=revision, token=options.hf_token)

    return fetch


COMMONSENSEQA = Benchmark(
    "commonsenseqa",
    "CommonsenseQA",
    "mcq",
    ("commonsenseqa_dev.jsonl",),
    commonsenseqa_items,
    _fetch("tau/commonsense_qa", "*validation*.parquet"),
)
WINOGRANDE = Benchmark(
    "winogrande",
    "WinoGrande",
    "mcq",
    ("winogrande_dev.jsonl",),
    winogrande_items,
    _fetch("allenai/winogrande", "winogrande_xl/validation*", "*xl*validation*.parquet"),
)
PIQA = Benchmark(
    "piqa",
    "PIQA",
    "mcq",
    ("piqa_valid.jsonl",),
    piqa_items,
    _fetch("ybisk/piqa", "*validation*.parquet", revision="refs/convert/parquet"),
)
COMMONSENSE = (COMMONSENSEQA, WINOGRANDE, PIQA)
