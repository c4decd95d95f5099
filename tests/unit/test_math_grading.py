"""Maths grading: every gold answer of MATH-500, AIME 24/25 and AMC 23 matches itself, alone and boxed in a reply;
a hand-labelled set of equivalent forms and near misses (with math-verify alone measured beside us); answers
extracted from QwQ-style replies; junk and worker threads; `score_records` and its errors."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from qwq.errors import InvalidRequestError
from qwq.eval import extract_answer, grade
from qwq.eval.grading import score_records
from qwq.eval.math_grading import boxed_spans, extract_math_answer, grade_math

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
GRADING = Path(__file__).resolve().parents[1] / "data" / "grading"
BENCHMARKS = ("math500", "aime24", "aime25", "amc23")


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def golds() -> list[tuple[str, str]]:
    """(benchmark, gold) for every item; missing data fails the tests, it never skips them."""
    missing = [name for name in BENCHMARKS if not (DATA / f"{name}.jsonl").is_file()]
    if missing:
        pytest.fail(f"benchmark data missing under {DATA}: {', '.join(missing)} (a copy of shared/ beside the clone)")
    found = []
    for name in BENCHMARKS:
        for record in _lines(DATA / f"{name}.jsonl"):
            answer = record["answer"]
            found.append((name, str(int(answer)) if isinstance(answer, float) else answer))
    assert len(found) == 600
    return found


def test_every_gold_matches_itself(golds):
    assert [(name, gold) for name, gold in golds if not grade_math(gold, gold)] == []


def test_every_gold_boxed_in_a_reply_matches_and_is_extracted(golds):
    failures = []
    for name, gold in golds:
        reply = f"First, 2 + 2 = 4. Wait, that is not what is asked.\n\nSo the answer is \\boxed{{{gold}}}."
        extracted = extract_math_answer(reply)
        if not (grade_math(gold, reply) and extracted is not None and grade_math(gold, extracted)):
            failures.append((name, gold, extracted))
    assert failures == []


def test_every_gold_in_a_final_answer_section_is_extracted(golds):
    failures = []
    for name, gold in golds:
        reply = f"Let me double-check: 3 \\times 4 = 12. Yes.\n\n**Final Answer**\n\n\\[ \\boxed{{{gold}}} \\]"
        if not grade_math(gold, extract_math_answer(reply)):
            failures.append((name, gold))
    assert failures == []


@pytest.fixture(scope="module")
def labelled() -> list[dict]:
    return _lines(GRADING / "math_equivalence.jsonl")


def test_labelled_set_is_large_and_balanced(labelled):
    false = sum(not pair["equivalent"] for pair in labelled)
    assert len(labelled) >= 80
    assert 0.35 <= false / len(labelled) <= 0.65
    assert all(set(pair) == {"gold", "prediction", "equivalent", "why"} for pair in labelled)


def test_labelled_equivalences_agree(labelled):
    wrong = [pair for pair in labelled if grade_math(pair["gold"], pair["prediction"]) != pair["equivalent"]]
    agreement = 1 - len(wrong) / len(labelled)
    print(f"\nqwq grade_math agrees with {len(labelled) - len(wrong)}/{len(labelled)} labels ({agreement:.1%})")
    assert agreement >= 0.95, wrong


def test_math_verify_alone_for_comparison(labelled):
    """math-verify on its own, the way it is meant to be called, measured on the same labels (for the record:
    we must not do worse than the library we build on)."""
    from math_verify import parse, verify

    def alone(gold: str, prediction: str) -> bool:
        return verify(parse(f"${gold}$"), parse(f"${prediction}$"))

    ours = sum(grade_math(pair["gold"], pair["prediction"]) == pair["equivalent"] for pair in labelled)
    theirs = sum(alone(pair["gold"], pair["prediction"]) == pair["equivalent"] for pair in labelled)
    print(
        f"\nagreement with {len(labelled)} labels: qwq {ours} ({ours / len(labelled):.1%}), "
        f"math-verify alone {theirs} ({theirs / len(labelled):.1%})"
    )
    assert ours >= theirs


EXTRACTION = _lines(GRADING / "extraction_cases.jsonl")


def test_extraction_cases_cover_commitments_and_cut_offs():
    assert len(EXTRACTION) >= 40
    assert sum(case["expected"] is None for case in EXTRACTION) >= 10


@pytest.mark.parametrize("case", EXTRACTION, ids=[case["why"] for case in EXTRACTION])
def test_extraction(case):
    assert extract_math_answer(case["text"]) == case["expected"]
    assert extract_answer(case["text"], "math") == case["expected"]


def test_boxed_spans_nest_and_skip_unclosed():
    text = r"\boxed{\frac{1}{2}} then \fbox{\{1, 2\}} then \boxed 7. and \boxed{\sqrt{"
    assert [content for _, _, content in boxed_spans(text)] == [r"\frac{1}{2}", r"\{1, 2\}", "7"]


@pytest.mark.parametrize(
    ("gold", "prediction", "expected"),
    [
        ("5", None, False),
        ("5", "", False),
        ("5", "   ", False),
        ("5", "$$", False),
        (r"\frac{1}{2}", r"The answer is \boxed{\dfrac12}.", True),  # a reply passed whole: its box is graded
        ("2516_8", "2516_8", True),
        ("2516_8", "2516_{9}", False),
        ("(1,2)", r"\{1,2\}", False),
        ("(1,2)", r"\left( 1, 2 \right)", True),
        (r"\frac{1}{3}", r"0.\overline{3}", True),
        (r"\frac{1}{6}", r"0.1\overline{6}", True),
        (r"\begin{pmatrix} -7 \\ 16 \\ 5 \end{pmatrix}", "(-7, 16, 5)", True),
        (r"\begin{pmatrix} -7 \\ 16 \\ 5 \end{pmatrix}", "(-7, 5, 16)", False),
        (r"\text{(C)}", "C.", True),
        (r"\text{ellipse}", "an ellipse", True),
        ("east", "seat", False),  # as sympy products of letters these two would be equal
        ("36", "36 dollars", True),
        ("1000", r"1\,000", True),
        (r"\frac{1}{2}", r"\frac{1}{2}.", True),
    ],
)
def test_forms_math_verify_misses(gold, prediction, expected):
    assert grade_math(gold, prediction) is expected
    assert grade(gold, prediction, "math") is expected


JUNK = [
    "",
    "}{",
    "\\frac{",
    "\\boxed{",
    "$$$",
    "\\begin{pmatrix} 1 & \\\\ \\end{pmatrix}",
    "9^{9^{9^{9}}}",
    "(10^{100})!",
    "2^{123456789}",
    "x" * 5000,
    "\\frac{" * 200,
    "\x00\ud800",
    "((((((((((((",
    "1,2,3," * 100,
]


@pytest.mark.parametrize("junk", JUNK, ids=range(len(JUNK)))
def test_junk_never_raises_and_is_quick(junk):
    start = time.monotonic()
    assert grade_math("5", junk) is False
    grade_math(junk, "5")
    extract_math_answer(junk)
    extract_math_answer(f"so the answer is \\boxed{{{junk}}}")
    assert time.monotonic() - start < 2


def test_worker_threads_grade_like_the_main_thread(labelled):
    """math-verify's timer works only on the main thread; off it the grader runs without one, with the same
    verdicts (and the costly inputs kept out by length and shape instead)."""
    pairs = labelled[:40] + [{"gold": "5", "prediction": "9^{9^{9^{9}}}"}]
    here = [grade_math(pair["gold"], pair["prediction"]) for pair in pairs]
    with ThreadPoolExecutor(max_workers=2) as pool:
        there = list(pool.map(lambda pair: grade_math(pair["gold"], pair["prediction"]), pairs))
    assert threading.current_thread() is threading.main_thread()
    assert there == here


def test_score_records_on_a_file():
    records = _lines(GRADING / "score_math.jsonl")
    assert list(score_records(records, "math")) == [
        {"id": "m1", "prediction": "42", "correct": True},
        {"id": "m2", "prediction": "4", "correct": False},
        {"id": "m3", "prediction": None, "correct": False},
        {"id": 17, "prediction": "27", "correct": True},
        {"id": "m5", "prediction": r"\text{Evelyn}", "correct": True},
        {"id": "m6", "prediction": "0.75", "correct": True},
    ]


@pytest.mark.parametrize(
    ("record", "message", "field"),
    [
        ({"question": "q", "answer": "1", "response": "r"}, "record 2: missing field 'id'", "id"),
        ({"id": "x", "question": "q", "response": "r"}, "record 2 (id 'x'): missing field 'answer'", "answer"),
        ({"id": "x", "question": "q", "answer": "1"}, "record 2 (id 'x'): missing field 'response'", "response"),
        ({"id": "x", "answer": "1", "response": None}, "record 2 (id 'x'): field 'response' must be str", "response"),
        ({"id": "x", "answer": True, "response": "r"}, "record 2 (id 'x'): field 'answer' must be", "answer"),
        (["not", "an", "object"], "record 2: expected a JSON object", None),
    ],
)
def test_score_records_names_the_bad_record_and_field(record, message, field):
    good = {"id": "ok", "question": "q", "answer": "1", "response": r"\boxed{1}"}
    scored = score_records([good, record], "math")
    assert next(scored)["correct"] is True
    with pytest.raises(InvalidRequestError, match=message.replace("(", r"\(").replace(")", r"\)")) as error:
        next(scored)
    assert error.value.field == field


@pytest.mark.parametrize("task", ["code", "proof", ""])
def test_tasks_without_an_answer_grader_are_refused(task):
    for call in (
        lambda: grade("1", "1", task),
        lambda: extract_answer("x", task),
        lambda: list(score_records([], task)),
    ):
        with pytest.raises(InvalidRequestError, match="code" if task == "code" else "unknown task"):
            call()
