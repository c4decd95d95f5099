"""A run's numbers, computed from its logged samples: accuracy with its 95% Wilson interval, breakdowns by
subject, level, domain and difficulty, pass@k and the majority vote, finish reasons, completed against
cut-off replies, token lengths, and the weaknesses the QwQ-32B-Preview card names: loops (found in each
reply's tokens), replies with no answer, language mixing, and how long the model thinks.

A summary is a plain dict (written as summary.json beside the report), so a script can read it too.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from qwq.eval.metrics import majority_vote, pass_at_k, wilson_interval
from qwq.eval.runner import CUT_OFF

if TYPE_CHECKING:
    from qwq.tokenizer.tokenizer import Tokenizer

BREAKDOWNS = ("subject", "level", "domain", "difficulty", "platform", "contest")
MIXING_SHARE = 0.01  # a reply mixes languages when more than 1% of its letters are in a script the prompt is not


def accuracy_row(per_item: Sequence[float]) -> dict[str, Any]:
    """Items, accuracy (the mean over items of each item's share of correct samples) and its interval, in %."""
    n = len(per_item)
    mean = sum(per_item) / n if n else 0.0
    low, high = wilson_interval(mean * n, n)
    return {"items": n, "accuracy": 100 * mean, "ci_low": 100 * low, "ci_high": 100 * high}


def _length_stats(values: Sequence[int]) -> dict[str, float]:
    if not values:
        return {"mean": 0.0, "median": 0.0, "p90": 0.0, "max": 0.0}
    ordered = sorted(values)
    return {
        "mean": statistics.fmean(ordered),
        "median": statistics.median(ordered),
        "p90": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))],
        "max": ordered[-1],
    }


def _pass_at(by_item: dict[str, list[dict[str, Any]]]) -> dict[int, float]:
    """Mean pass@k over items for k = 1, 2, 4, ... up to the fewest samples any item has, and that number."""
    fewest = min(len(samples) for samples in by_item.values())
    ks = sorted({k for k in (2**i for i in range(fewest.bit_length())) if k <= fewest} | {fewest})
    return {
        k: 100 * statistics.fmean(pass_at_k(len(s), sum(r["correct"] for r in s), k) for s in by_item.values())
        for k in ks
    }


def _majority(by_item: dict[str, list[dict[str, Any]]], same: Callable[[str, str], bool]) -> float:
    """maj@n in %: an item counts when the answer most of its completed samples give is a correct one."""
    wins = 0
    for samples in by_item.values():
        answered = [r for r in samples if r["finish_reason"] not in CUT_OFF and r["prediction"] is not None]
        winner = majority_vote([r["prediction"] for r in answered], same)
        wins += any(r["correct"] for r in answered if winner is not None and same(winner, r["prediction"]))
    return 100 * wins / len(by_item)


def _loop_flags(records: Iterable[dict[str, Any]], tokenizer: Tokenizer | None) -> list[bool]:
    """Per reply with a known answer: did it loop? A loop the engine's controls caught and cut counts, and so
    does one found in its logged token ids (or its text re-encoded, for a run over HTTP); a reply of neither
    kind is left out."""
    from qwq.reasoning.loops import find_loop

    flags = []
    for record in records:
        caught = (record.get("controls") or {}).get("loops", {}).get("detected", 0) > 0
        ids = record.get("token_ids")
        if ids is None and tokenizer is not None and record.get("reply"):
            ids = tokenizer.encode(record["reply"])
        if ids is None and not caught:
            continue
        flags.append(caught or find_loop(ids, tokenizer) is not None)
    return flags


def _mixing(records: Iterable[dict[str, Any]]) -> tuple[list[float], int, int]:
    """Per reply the share of its letters in scripts other than its prompt's, and the totals."""
    from qwq.reasoning.language import detect_scripts, mixing

    shares, foreign_total, letters_total = [], 0, 0
    for record in records:
        allowed = detect_scripts(record["prompt"])
        if not allowed:
            continue
        foreign, letters = mixing(record["reply"], allowed)
        shares.append(foreign / letters if letters else 0.0)
        foreign_total, letters_total = foreign_total + foreign, letters_total + letters
    return shares, foreign_total, letters_total


def summarize(
    records: Sequence[dict[str, Any]],
    about: dict[str, Any],
    *,
    tokenizer: Tokenizer | None = None,
    same: Callable[[str, str], bool] | None = None,
) -> dict[str, Any]:
    """The numbers of one benchmark run under one configuration (`about`: its config.json entry)."""
    by_item: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in sorted(records, key=lambda r: r["sample"]):
        by_item[record["item"]].append(record)
    per_item = {item: statistics.fmean(r["correct"] for r in samples) for item, samples in by_item.items()}
    overall = accuracy_row(list(per_item.values()))
    breakdowns: dict[str, list[dict[str, Any]]] = {}
    for key in BREAKDOWNS:
        groups: dict[str, list[float]] = defaultdict(list)
        for item, samples in by_item.items():
            value = samples[0].get("meta", {}).get(key)
            if value not in (None, ""):
                groups[str(value)].append(per_item[item])
        if len(groups) > 1 or (groups and len(by_item) > 1):
            breakdowns[key] = [{"name": name, **accuracy_row(v)} for name, v in sorted(groups.items())]
    completed = [r for r in records if r["finish_reason"] not in CUT_OFF]
    cut = [r for r in records if r["finish_reason"] in CUT_OFF]
    loops = _loop_flags(records, tokenizer)
    shares, foreign, letters = _mixing(records)
    thinking = [r["reasoning_tokens"] for r in records]
    samples = max(len(s) for s in by_item.values())
    task = about.get("task") or records[0]["task"]
    return {
        "benchmark": records[0]["benchmark"],
        "title": about.get("title") or records[0]["benchmark"],
        "task": task,
        "config": about,
        "published": about.get("published"),
        "samples": len(records),
        "samples_per_item": samples,
        **overall,
        "no_answer": sum(r["no_answer"] for r in records),
        "no_answer_rate": 100 * sum(r["no_answer"] for r in records) / len(records),
        "breakdowns": breakdowns,
        "pass_at": _pass_at(by_item) if samples > 1 else {},
        "majority": _majority(by_item, same or str.__eq__) if samples > 1 and task != "code" else None,
        "finish_reasons": dict(Counter(r["finish_reason"] for r in records).most_common()),
        "completed": {"replies": len(completed), "accuracy": _share(completed, "correct")},
        "cut_off": {"replies": len(cut), "accuracy_if_counted": _share(cut, "graded_correct")},
        "lengths": {
            "reasoning": _length_stats(thinking),
            "answer": _length_stats([r["answer_tokens"] for r in records]),
            "prompt": _length_stats([r["prompt_tokens"] for r in records]),
        },
        "loop_rate": 100 * sum(loops) / len(loops) if loops else None,
        "loop_checked": len(loops),
        "mixing_rate": 100 * sum(s > MIXING_SHARE for s in shares) / len(shares) if shares else None,
        "foreign_letter_share": 100 * foreign / letters if letters else None,
        "mean_thinking_tokens": statistics.fmean(thinking),
        "seconds": sum(r.get("seconds") or 0.0 for r in records),
        "points": [(r["reasoning_tokens"], r["answer_tokens"], bool(r["correct"])) for r in records],
    }


def _share(records: Sequence[dict[str, Any]], key: str) -> float | None:
    return 100 * sum(bool(r.get(key)) for r in records) / len(records) if records else None
