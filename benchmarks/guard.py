"""The safety guards' quality and cost in one run:

- the policy guard's precision and recall on tests/data/guard/labelled.jsonl with tests/data/guard/policy.toml,
  for each batch of the set (written with the policy; held out, then used to widen it; fresh, never fitted);
- the policy guard's cost per streamed chunk (µs): a long reply pushed `chunk_tokens` tokens at a time (about 4
  characters a token) through its reply checker, against `check_reply` on the whole reply so far at the end;
- the model guard's streaming overhead on a tiny random checkpoint (tests/tiny_checkpoints.py), whose prompt is
  spelled in byte tokens: seconds per `check_reply` every `chunk_tokens` tokens of a greedy reply, and that
  against the time the same model takes to generate those `chunk_tokens` tokens.

    python benchmarks/guard.py [--reply-chars 40000] [--model-tokens 512] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import qwq
from qwq.guard import ModelGuard, PolicyGuard

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "guard"
sys.path.insert(0, str(ROOT / "tests"))  # the tiny checkpoint writer lives with the tests

from tiny_checkpoints import write_gguf  # noqa: E402

BATCHES = {"heldout-": "held out, then fitted", "fresh-": "fresh, never fitted"}  # by id prefix
ASK = [{"role": "user", "content": "Explain how a bread starter works."}]


def batch(row: dict) -> str:
    """Which batch of the labelled set `row` is in: they were written at different times against the policy."""
    return next((name for prefix, name in BATCHES.items() if row["id"].startswith(prefix)), "with the policy")


def quality(guard: PolicyGuard, rows: list[dict]) -> str:
    blocked = [guard.scan(row["text"], row["role"]) is not None for row in rows]
    tp = sum(b and r["harmful"] for b, r in zip(blocked, rows, strict=True))
    fp = sum(b and not r["harmful"] for b, r in zip(blocked, rows, strict=True))
    fn = sum(not b and r["harmful"] for b, r in zip(blocked, rows, strict=True))
    precision, recall = tp / max(1, tp + fp), tp / max(1, tp + fn)
    return f"precision {precision:.3f}  recall {recall:.3f}  (tp {tp}, fp {fp}, fn {fn})"


def policy_chunk_cost(guard: PolicyGuard, rows: list[dict], reply_chars: int) -> tuple[list[float], float]:
    """µs of each streamed push of a long benign reply, and µs of one whole-text check_reply at its end."""
    benign = " ".join(row["text"] for row in rows if not row["harmful"])
    reply = (benign * (reply_chars // len(benign) + 1))[:reply_chars]
    chunk = guard.chunk_tokens * 4
    checker = guard.reply_checker(ASK)
    pushes = []
    for start in range(0, len(reply), chunk):
        began = time.perf_counter()
        checker.push(reply[start : start + chunk], final=start + chunk >= len(reply))
        pushes.append((time.perf_counter() - began) * 1e6)
    began = time.perf_counter()
    guard.check_reply(ASK, reply)
    return pushes, (time.perf_counter() - began) * 1e6


def model_overhead(tokens: int, chunk_tokens: int) -> tuple[list[float], float, int]:
    """Seconds per guard check while a reply of `tokens` tokens streams, the seconds the model takes for
    `chunk_tokens` new tokens, and the guard prompt's length in tokens at the first check."""
    with tempfile.TemporaryDirectory() as directory:
        path = write_gguf(Path(directory) / "tiny.gguf", context=4096)
        model = qwq.load(path, dtype="float32", device="cpu")
        guard = ModelGuard(qwq.load(path, dtype="float32", device="cpu"), "llama-guard-3", chunk_tokens=chunk_tokens)
    tokenizer = model.tokenizer
    prompt = tokenizer.encode(tokenizer.apply_chat_template(ASK))
    model.generate(prompt, max_new_tokens=8, temperature=0, ignore_eos=True)  # warm-up
    started = time.perf_counter()
    ids = model.generate(prompt, max_new_tokens=tokens, temperature=0, ignore_eos=True)
    per_chunk = (time.perf_counter() - started) / tokens * chunk_tokens
    checker = guard.reply_checker(ASK)
    checks, first_prompt = [], 0
    for start in range(0, len(ids), chunk_tokens):
        text = tokenizer.decode(ids[start : start + chunk_tokens])
        if not first_prompt:
            first_prompt = len(guard.prompt_ids([("user", ASK[0]["content"]), ("assistant", text)]))
        began = time.perf_counter()
        checker.push(text, final=start + chunk_tokens >= len(ids))
        checks.append(time.perf_counter() - began)
    return checks, per_chunk, first_prompt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", default=str(DATA / "policy.toml"))
    parser.add_argument("--reply-chars", type=int, default=40_000, help="length of the streamed reply (policy)")
    parser.add_argument("--model-tokens", type=int, default=512, help="tokens of the streamed reply (model guard)")
    parser.add_argument("--model-chunk", type=int, default=128, help="tokens between model-guard checks")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("qwq").setLevel(logging.ERROR)  # a random guard's answers are noise: no warning for each

    guard = PolicyGuard.from_file(args.policy)
    rows = [json.loads(line) for line in (DATA / "labelled.jsonl").read_text(encoding="utf-8").splitlines()]
    print(f"policy guard on {len(rows)} labelled items ({sum(r['harmful'] for r in rows)} harmful)")
    for name in ("with the policy", *BATCHES.values()):
        rows_in = [row for row in rows if batch(row) == name]
        print(f"  {f'{name} ({len(rows_in)})':30} {quality(guard, rows_in)}")
    print(f"  {f'all ({len(rows)})':30} {quality(guard, rows)}")

    pushes, whole = policy_chunk_cost(guard, rows, args.reply_chars)
    tenth = max(1, len(pushes) // 10)
    mean = statistics.mean(pushes)
    print(f"policy guard, a {args.reply_chars}-character reply in {len(pushes)} pushes of {guard.chunk_tokens} tokens:")
    print(
        f"  reply_checker push: {mean:.0f} µs per chunk (first tenth {statistics.mean(pushes[:tenth]):.0f} µs, "
        f"last tenth {statistics.mean(pushes[-tenth:]):.0f} µs)"
    )
    print(f"  check_reply on the whole reply at its end: {whole:.0f} µs ({whole / mean:.0f}x a push)")

    checks, per_chunk, first_prompt = model_overhead(args.model_tokens, args.model_chunk)
    mean = statistics.mean(checks)
    print(
        f"model guard (tiny random Qwen2, {args.threads} thread(s)), a {args.model_tokens}-token reply checked every "
        f"{args.model_chunk} tokens ({len(checks)} checks, guard prompt {first_prompt}+ tokens):"
    )
    print(f"  check_reply: {mean:.3f} s mean, {min(checks):.3f}-{max(checks):.3f} s")
    print(f"  generating {args.model_chunk} tokens: {per_chunk:.3f} s; a check costs {mean / per_chunk:.2f}x that")


if __name__ == "__main__":
    main()
