"""The loop detector's numbers on its corpus (tests/data/loops): precision, recall, detection latency, cost.

    python benchmarks/loop_detector.py [--no-tokenizer] [--cost-tokens 50000] [--corpus PATH]

A hit is right when it comes at or after the labelled onset and its onset is within max(period, 32) tokens of the
label (as tests/unit/test_loop_detector.py scores it); any other hit is a false positive. Latency is the token a
hit came on minus the labelled onset. Cost: push() over a long healthy trace (the corpus's negatives end to end),
in microseconds a token (CPU time, and wall time, which a busy machine inflates), best of three; and one
truncate() of that trace to half its length (a replay).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import Counter
from pathlib import Path

from qwq.local_models import fetch
from qwq.reasoning.loops import LoopDetector
from qwq.tokenizer.tokenizer import Tokenizer
from qwq.weights.gguf import GGUFFile

CORPUS = Path(__file__).resolve().parents[1] / "tests" / "data" / "loops" / "corpus.jsonl"


def first_hit(ids: list[int], tokenizer: Tokenizer | None) -> tuple[int, int, int, str] | None:
    """(token index of the hit, onset, period, kind) of the detector's first hit."""
    detector = LoopDetector(tokenizer)
    for i, token in enumerate(ids):
        hit = detector.push(token)
        if hit is not None:
            return i, hit.onset, hit.period, hit.kind
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-tokenizer", action="store_true", help="run LoopDetector(None): exact cycles only")
    parser.add_argument("--cost-tokens", type=int, default=50_000)
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    args = parser.parse_args()
    tokenizer = None if args.no_tokenizer else Tokenizer.from_gguf(GGUFFile(fetch("qwen2.5-coder:0.5b")))
    corpus = [json.loads(line) for line in args.corpus.open()]

    right, wrong, missed, latency = Counter(), Counter(), Counter(), []
    kinds_agree, false_positives = 0, []
    for example in corpus:
        found = first_hit(example["token_ids"], tokenizer)
        group = f"{example['source']}/{example['kind']}"
        ok = (
            found is not None
            and example["loop"]
            and found[0] >= example["onset"]
            and abs(found[1] - example["onset"]) <= max(example["period"], 32)
        )
        if ok:
            right[group] += 1
            latency.append(found[0] - example["onset"])
            kinds_agree += found[3] == example["kind"]
        elif found is not None:
            wrong[group] += 1
            false_positives.append((example["id"], found))
        if example["loop"] and not ok:
            missed[group] += 1
    positives = sum(example["loop"] for example in corpus)
    tp, fp = sum(right.values()), sum(wrong.values())
    latency.sort()
    print(f"corpus: {len(corpus)} examples, {positives} loops; tokenizer: {tokenizer is not None}")
    print(f"precision {tp / max(1, tp + fp):.3f}  recall {tp / positives:.3f}  ({tp} right, {fp} false positives)")
    print(
        f"latency (tokens after onset): median {statistics.median(latency):.0f}, "
        f"p90 {latency[int(0.9 * (len(latency) - 1))]}, max {latency[-1]}"
    )
    print(f"kind as labelled: {kinds_agree} of {tp}")
    for group in sorted({f"{e['source']}/{e['kind']}" for e in corpus}):
        print(f"  {group:32} right {right[group]:3}  missed {missed[group]:3}  false positives {wrong[group]:3}")
    for name, found in false_positives:
        print(f"  false positive: {name} {found}")

    healthy = [t for e in corpus if not e["loop"] for t in e["token_ids"]]
    while len(healthy) < args.cost_tokens:
        healthy += healthy
    healthy = healthy[: args.cost_tokens]
    wall = cpu = float("inf")
    for _ in range(3):
        detector, start, start_cpu = LoopDetector(tokenizer), time.perf_counter(), time.process_time()
        for token in healthy:
            detector.push(token)
        wall, cpu = min(wall, time.perf_counter() - start), min(cpu, time.process_time() - start_cpu)
    start = time.perf_counter()
    detector.truncate(len(healthy) // 2)
    replay = time.perf_counter() - start
    print(
        f"push: {cpu / len(healthy) * 1e6:.2f} us CPU a token ({wall / len(healthy) * 1e6:.2f} us wall) over "
        f"{len(healthy)} tokens, best of 3"
    )
    print(f"truncate to {len(healthy) // 2} tokens (replay): {replay * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
