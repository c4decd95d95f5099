"""Multiple-choice grading: letters from hand-labelled replies (committed, corrected, stated as an option's text,
cut off), the lettered options of a question, the GPQA layout, and `score_records` for mcq."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from qwq.errors import InvalidRequestError
from qwq.eval import extract_answer, grade
from qwq.eval.choice_grading import extract_choice, grade_choice, parse_options
from qwq.eval.grading import score_records

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
GRADING = Path(__file__).resolve().parents[1] / "data" / "grading"


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


CASES = _lines(GRADING / "choice_cases.jsonl")


def test_cases_cover_commitments_and_cut_offs():
    assert len(CASES) >= 40
    assert sum(case["expected"] is None for case in CASES) >= 10
    assert sum("options" in case for case in CASES) >= 5


@pytest.mark.parametrize("case", CASES, ids=[case["why"] for case in CASES])
def test_extract_choice(case):
    assert extract_choice(case["text"], case.get("options"), case.get("letters", "ABCD")) == case["expected"]


@pytest.mark.parametrize(
    ("gold", "prediction", "expected"),
    [
        ("C", "C", True),
        ("C", "(C)", True),
        ("(B)", "B", True),
        (r"\text{D}", "D", True),
        ("c", "C", True),
        ("C", "D", False),
        ("C", None, False),
        ("C", "", False),
        ("", "", False),
        ("C", "CD", False),
    ],
)
def test_grade_choice(gold, prediction, expected):
    assert grade_choice(gold, prediction) is expected
    assert grade(gold, prediction, "mcq") is expected


@pytest.mark.parametrize(
    ("question", "options"),
    [
        ("Which?\n(A) 5\n(B) 6\n(C) 7\n(D) 8", {"A": "5", "B": "6", "C": "7", "D": "8"}),
        ("Fruit?\nA. apple\nB. banana", {"A": "apple", "B": "banana"}),
        ("Pick one.\n\nA) x + 1\nB) x - 1\nC) 2x", {"A": "x + 1", "B": "x - 1", "C": "2x"}),
        ("Count?\nA: one\nB: two", {"A": "one", "B": "two"}),
        ("Colour?\n**A)** red\n**B)** blue", {"A": "red", "B": "blue"}),
        (
            r"What is $2+3$? $\textbf{(A) }5\qquad\textbf{(B) }6\qquad\textbf{(C) }7\qquad\textbf{(D) }8$",
            {"A": "5", "B": "6", "C": "7", "D": "8"},
        ),
        ("No options here.", {}),
        ("Gap.\nA. first\nC. third", {}),
        ("A. Smith wrote a letter.\nThe rest is prose.", {}),
    ],
)
def test_parse_options(question, options):
    assert parse_options(question) == options


def _gpqa_question(record: dict, seed: int) -> tuple[str, str, dict[str, str]]:
    """A GPQA record asked as the eval asks it: the four answers shuffled and lettered A-D, one per line."""
    answers = [record["Correct Answer"]] + [record[f"Incorrect Answer {i}"] for i in (1, 2, 3)]
    order = list(range(4))
    random.Random(seed).shuffle(order)
    options = {letter: answers[i].strip() for letter, i in zip("ABCD", order, strict=True)}
    gold = "ABCD"[order.index(0)]
    lines = "\n".join(f"{letter}) {text}" for letter, text in options.items())
    return f"{record['Question'].strip()}\n\n{lines}", gold, options


def test_gpqa_layout():
    path = DATA / "gpqa_format_sample.jsonl"
    if not path.is_file():
        pytest.fail(f"benchmark data missing: {path} (a copy of shared/ beside the clone)")
    records = _lines(path)
    assert len(records) == 3
    for seed, record in enumerate(records):
        question, gold, options = _gpqa_question(record, seed)
        assert parse_options(question) == options
        correct = record["Correct Answer"]
        wrong = "ABCD".replace(gold, "")[0]
        replies = {
            f"Let me think it through.\n\nAnswer: {gold}": True,
            f"Working it out, the answer is {correct}.": True,
            f"So the correct answer is ({wrong}).": False,
            f"Let me check option {wrong} first, since": None,
        }
        for reply, verdict in replies.items():
            prediction = extract_answer(reply, "mcq", question=question)
            assert (None if prediction is None else grade(gold, prediction, "mcq")) == verdict, reply


def test_score_records_on_a_file():
    assert list(score_records(_lines(GRADING / "score_mcq.jsonl"), "mcq")) == [
        {"id": "q1", "prediction": "C", "correct": True},
        {"id": "q2", "prediction": "B", "correct": True},  # the option's text, mapped to its letter
        {"id": "q3", "prediction": None, "correct": False},
        {"id": "q4", "prediction": "D", "correct": False},  # five options: E is a valid letter here
    ]


def test_score_records_needs_the_question_for_mcq():
    with pytest.raises(InvalidRequestError, match=r"record 1 \(id 'q'\): missing field 'question'") as error:
        list(score_records([{"id": "q", "answer": "C", "response": "Answer: C"}], "mcq"))
    assert error.value.field == "question"
