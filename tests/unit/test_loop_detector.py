"""The loop detector on its labelled corpus (tests/data/loops, built by scripts/make_loop_corpus.py): precision and
recall, no hit on any hard-negative kind, O(1) cost per token, truncate-then-continue, and the offline scan.

A hit is right when it comes at or after the labelled onset and its onset is within max(period, 32) tokens of the
label (the block's length: an onset one copy off still cuts the loop at a copy boundary; 32 for short phrases,
whose repeats a few tokens apart are the same loop). Anything else a hit does is a false positive.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest

from qwq.errors import InvalidRequestError
from qwq.local_models import fetch
from qwq.reasoning.loops import KINDS, LoopDetector, LoopHit, find_loop
from qwq.tokenizer.tokenizer import Tokenizer
from qwq.weights.gguf import GGUFFile

DATA = Path(__file__).resolve().parents[1] / "data" / "loops"
HARD_NEGATIVE_KINDS = (
    "table",
    "enumeration",
    "code",
    "multiplication",
    "wait",
    "number-list",
    "short-lines",
    "recheck",
)


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_gguf(GGUFFile(fetch("qwen2.5-coder:0.5b")))


@pytest.fixture(scope="module")
def corpus() -> list[dict]:
    with (DATA / "corpus.jsonl").open() as f:
        return [json.loads(line) for line in f]


def first_hit(ids: list[int], tokenizer: Tokenizer | None) -> tuple[LoopHit, int] | None:
    """The detector's first hit on a trace and the token index it came on."""
    detector = LoopDetector(tokenizer)
    for i, token in enumerate(ids):
        hit = detector.push(token)
        if hit is not None:
            return hit, i
    return None


def is_right(example: dict, found: tuple[LoopHit, int] | None) -> bool:
    if found is None or not example["loop"]:
        return False
    hit, at = found
    return at >= example["onset"] and abs(hit.onset - example["onset"]) <= max(example["period"], 32)


@pytest.fixture(scope="module")
def results(corpus: list[dict], tokenizer: Tokenizer) -> list[tuple[dict, tuple[LoopHit, int] | None]]:
    return [(example, first_hit(example["token_ids"], tokenizer)) for example in corpus]


def test_corpus_is_big_enough(corpus: list[dict]) -> None:
    loops = sum(example["loop"] for example in corpus)
    assert len(corpus) >= 150 and loops >= 60 and len(corpus) - loops >= 60
    assert {example["source"] for example in corpus} >= {"real-0.5b", "spliced", "hard-negative"}
    assert sum(path.stat().st_size for path in DATA.iterdir()) < 3_000_000


def test_precision_and_recall(results: list[tuple[dict, tuple[LoopHit, int] | None]]) -> None:
    right = [(example, found) for example, found in results if is_right(example, found)]
    wrong = [(example, found) for example, found in results if found is not None and not is_right(example, found)]
    positives = sum(example["loop"] for example, _ in results)
    precision = len(right) / max(1, len(right) + len(wrong))
    recall = len(right) / positives
    latency = sorted(at - example["onset"] for example, (_, at) in right)
    p90 = latency[int(0.9 * (len(latency) - 1))]
    missed = [example["id"] for example, found in results if example["loop"] and not is_right(example, found)]
    summary = (
        f"precision {precision:.3f} recall {recall:.3f} latency median {statistics.median(latency)} p90 {p90} tokens; "
        f"false positives {[(e['id'], f[0]) for e, f in wrong]}; missed {missed}"
    )
    assert precision >= 0.95 and recall >= 0.95, summary
    print(summary)


@pytest.mark.parametrize("kind", HARD_NEGATIVE_KINDS)
def test_no_hard_negative_fires(kind: str, results: list[tuple[dict, tuple[LoopHit, int] | None]]) -> None:
    examples = [(example, found) for example, found in results if example["kind"] == kind]
    assert examples, f"the corpus has no {kind} examples"
    fired = [(example["id"], found[0]) for example, found in examples if found is not None]
    assert not fired, f"{kind}: fired on {fired}"


def test_hit_kinds_are_known(results: list[tuple[dict, tuple[LoopHit, int] | None]]) -> None:
    assert {found[0].kind for _, found in results if found is not None} <= set(KINDS)


def test_cost_per_token_is_constant(corpus: list[dict], tokenizer: Tokenizer) -> None:
    """20,000 healthy tokens cost about 4x what 5,000 do (a rescan of the history would cost 16x); CPU time, so
    that other work on a shared machine does not count."""
    healthy = [t for example in corpus if not example["loop"] for t in example["token_ids"]]
    assert len(healthy) >= 20_000

    def seconds(n: int) -> float:
        best = float("inf")
        for _ in range(2):
            detector, start = LoopDetector(tokenizer), time.process_time()
            for token in healthy[:n]:
                detector.push(token)
            best = min(best, time.process_time() - start)
        return best

    short, long = seconds(5_000), seconds(20_000)
    assert long < 8 * short, f"5,000 tokens: {short:.3f} s, 20,000 tokens: {long:.3f} s"
    assert long / 20_000 < 200e-6, f"{long / 20_000 * 1e6:.1f} us a token"


def test_reports_once_and_again_after_truncate(tokenizer: Tokenizer) -> None:
    prefix = tokenizer.encode("We want the smallest n with n^2 > 50. Try n = 7: 49, too small. Try n = 8: 64!\n")
    block = tokenizer.encode("Let me double-check the arithmetic: 8 times 8 is 64, which is more than 50.\n")
    detector = LoopDetector(tokenizer)
    hits = [(i, hit) for i, t in enumerate(prefix + block * 12) if (hit := detector.push(t)) is not None]
    assert len(hits) == 1, hits  # one report, however long the loop goes on
    at, hit = hits[0]
    assert hit.onset == len(prefix) and hit.period == len(block) and hit.kind == "verbatim"
    assert at == len(prefix) + 3 * len(block) - 1  # the last token of the third copy
    keep = hit.onset + hit.period  # the engine keeps the first copy
    detector.truncate(keep)
    assert len(detector) == keep
    fresh = tokenizer.encode("So n = 8 is the answer, and 7 is not enough since 49 < 50!\n")
    assert all(detector.push(t) is None for t in fresh)
    again = [hit for t in block * 4 if (hit := detector.push(t)) is not None]
    assert len(again) == 1 and again[0].onset == keep + len(fresh), again


def test_a_second_loop_is_reported_without_truncate(tokenizer: Tokenizer) -> None:
    first = tokenizer.encode("Let me double-check the arithmetic: 8 times 8 is 64, which is more than 50.\n")
    between = tokenizer.encode(
        "Fine, so the answer is 8. Now the second part asks for the largest n with n^3 below 500, which is new!\n"
    )
    second = tokenizer.encode("Check: 7 cubed is 343 and 8 cubed is 512, so the largest such n must be 7 here.\n")
    detector = LoopDetector(tokenizer)
    ids = first * 5 + between + second * 5
    hits = [hit for t in ids if (hit := detector.push(t)) is not None]
    assert hits == [LoopHit(0, len(first), "verbatim"), LoopHit(5 * len(first) + len(between), len(second), "verbatim")]


def test_truncate_equals_a_fresh_detector(corpus: list[dict], tokenizer: Tokenizer) -> None:
    example = next(e for e in corpus if e["source"] == "spliced" and e["kind"] == "near-verbatim")
    ids, cut = example["token_ids"], example["onset"] + 5
    detector = LoopDetector(tokenizer)
    for t in ids:
        detector.push(t)
    detector.truncate(cut)
    fresh = LoopDetector(tokenizer)
    for t in ids[:cut]:
        fresh.push(t)
    assert [detector.push(t) for t in ids[cut:]] == [fresh.push(t) for t in ids[cut:]]
    detector.truncate(len(detector) + 10)  # past the end: nothing to forget
    with pytest.raises(InvalidRequestError):
        detector.truncate(-1)


def test_find_loop_on_a_saved_trace(corpus: list[dict], tokenizer: Tokenizer) -> None:
    example = next(e for e in corpus if e["source"] == "real-0.5b" and e["loop"])
    hit = find_loop(example["token_ids"], tokenizer)
    streamed = first_hit(example["token_ids"], tokenizer)
    assert streamed is not None and hit == streamed[0] and is_right(example, streamed)
    assert find_loop(tokenizer.encode("A short healthy answer: 42.")) is None


def test_verbatim_loops_without_a_tokenizer(corpus: list[dict]) -> None:
    verbatim = [e for e in corpus if e["source"] == "spliced" and e["kind"] == "verbatim"]
    right = sum(is_right(e, first_hit(e["token_ids"], None)) for e in verbatim)
    assert right >= 0.95 * len(verbatim), f"{right} of {len(verbatim)}"
    assert find_loop([5, 6, 7, 8] * 30) == LoopHit(0, 4, "degenerate")


def test_hit_and_thresholds() -> None:
    hit = LoopHit(3, 10, "verbatim")
    with pytest.raises(FrozenInstanceError):
        hit.onset = 4  # type: ignore[misc]
    with pytest.raises(InvalidRequestError):
        LoopDetector(min_copies=0)
    assert find_loop([1, 2, 3, 4, 5, 6, 7, 8] * 3, min_span=24) == LoopHit(0, 8, "degenerate")
    assert find_loop([1, 2, 3, 4, 5, 6, 7, 8] * 3) is None  # 24 tokens: below the default span
