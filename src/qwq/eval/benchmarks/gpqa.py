"""GPQA-Diamond: 198 graduate-level multiple-choice questions. The CSV gives one correct and three incorrect
answers, unlettered; each item's four options are shuffled with a seed of its own (recorded in its meta, with
the order), lettered A-D, and the correct letter is the gold. The set is gated on the Hub (Idavidrein/gpqa).
"""

from __future__ import annotations

import random
from typing import Any

from qwq.eval.benchmarks.spec import Benchmark, DataOptions, Records, item_seed, need, record_id
from qwq.eval.hub_data import hub_rows
from qwq.eval.prompts import LETTERS, mcq_prompt
from qwq.eval.types import Item

_WRONG = ("Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")


def shuffled(correct: str, wrong: list[str], seed: int) -> tuple[list[str], list[int], str]:
    """The options in seeded order, that order (indices into [correct, *wrong]) and the correct letter."""
    order = list(range(1 + len(wrong)))
    random.Random(seed).shuffle(order)
    choices = [correct, *wrong]
    return [choices[i] for i in order], order, LETTERS[order.index(0)]


def _difficulty(text: str) -> str:
    """The writer's estimate without its explanation in brackets: "Hard undergraduate level"."""
    return text.split(" (")[0].strip()


def gpqa_items(records: Records, options: DataOptions, benchmark: str = "gpqa-diamond") -> list[Item]:
    found = []
    for index, record in enumerate(records):
        item_id = record_id(record, index, "Record ID")
        correct = str(need(record, index, "Correct Answer")).strip()
        wrong = [str(need(record, index, name)).strip() for name in _WRONG]
        seed = item_seed(options.shuffle_seed, item_id)
        choices, order, letter = shuffled(correct, wrong, seed)
        meta: dict[str, Any] = {"shuffle_seed": seed, "order": order}
        for key, column in (("domain", "High-level domain"), ("subdomain", "Subdomain")):
            if record.get(column):
                meta[key] = str(record[column]).strip()
        if record.get("Writer's Difficulty Estimate"):
            meta["difficulty"] = _difficulty(str(record["Writer's Difficulty Estimate"]))
        if record.get("_synthetic"):
            meta["synthetic"] = True
        prompt = mcq_prompt(str(need(record, index, "Question")), choices)
        found.append(Item(benchmark, item_id, "mcq", prompt, letter, None, meta))
    return found


def _fetch(options: DataOptions) -> tuple[list[dict[str, Any]], str]:
    return hub_rows("Idavidrein/gpqa", ("gpqa_diamond.csv",), token=options.hf_token)


GPQA_DIAMOND = Benchmark(
    "gpqa-diamond", "GPQA-Diamond", "mcq", ("gpqa_diamond.jsonl", "gpqa_diamond.csv"), gpqa_items, _fetch, 65.2
)
