"""The reasoning controls measured side by side in one run, on the real 0.5B (int4) with QwQ-Preview's format
forced (the whole reply is reasoning until a `**Final Answer**` heading, as QwQ-32B-Preview writes):

- recovery: the prompts of tests/data/loops/looping_prompts.json (they make the model loop under greedy
  decoding), greedy, `--max-tokens` each, with loop recovery on and off: how many end with a non-empty answer
  inside the budget, how many run to the length limit, tokens cut;
- budget: for each `--budgets` value and both formats (`qwq-preview`, `think` with the prompt opening
  `<think>`), the reasoning's length against the budget and whether an answer followed;
- overhead: decode tok/s of the same greedy reply with every control off, with the loop detector on, and with
  the detector plus the language guard's mask (median of `--repeats`, interleaved), and the per-token cost;
- before/after (`--before-src DIR`, e.g. a worktree of the last commit's src/): `qwq.benchmark.run_benchmark`
  decode tok/s of a plain model (no control runs) on the old code and on this checkout, alternating in
  separate processes: the every-control-off path must not be slower.

    python benchmarks/reasoning_controls.py [--limit 10] [--max-tokens 1200] [--before-src /tmp/qwq-before/src]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

import qwq
from qwq.engine.reasoning_split import ReasoningFormat

ROOT = Path(__file__).resolve().parents[1]
LOOPING_PROMPTS = ROOT / "tests" / "data" / "loops" / "looping_prompts.json"
BUDGET_PROMPTS = [
    "What is 17 times 23? Explain every step.",
    "How many positive divisors does 360 have? Show your reasoning.",
    "A train travels 120 km in 1.5 hours. What is its average speed? Explain.",
]
THINK = ReasoningFormat("think", True, True)
QWQ_PREVIEW = ReasoningFormat.named("qwq-preview")


def _prompt(model: qwq.Model, text: str, fmt: ReasoningFormat) -> tuple[list[int], list[dict[str, str]]]:
    messages = [{"role": "user", "content": text}]
    rendered = model.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    return model.tokenizer.encode(rendered + ("<think>\n" if fmt is THINK else "")), messages


def _run(model: qwq.Model, text: str, fmt: ReasoningFormat, **fields) -> qwq.Completion:
    model.reasoning = fmt
    ids, messages = _prompt(model, text, fmt)
    completion = model.complete(model.request(ids, model.params(temperature=0, **fields), messages=messages))
    for _ in completion.pieces():
        pass
    return completion


def recovery(model: qwq.Model, limit: int, max_tokens: int) -> None:
    prompts = json.loads(LOOPING_PROMPTS.read_text())[:limit]
    print(f"\n## recovery: {len(prompts)} looping prompts, greedy, max_tokens {max_tokens}")
    for action in ("recover", "off"):
        answered = length = cut = detected = 0
        reasons: dict[str, int] = {}
        for text in prompts:
            completion = _run(model, text, QWQ_PREVIEW, max_tokens=max_tokens, loop=action, max_answer_tokens=256)
            cued_out = any(n.data.get("cued") for n in completion.notices)  # the answer's budget ran out
            answered += bool(completion.answer.strip()) and completion.finish_reason != "length" and not cued_out
            length += completion.finish_reason == "length"
            reasons[completion.finish_reason] = reasons.get(completion.finish_reason, 0) + 1
            loops = completion.report.get("loops", {})
            cut += loops.get("tokens_cut", 0)
            detected += loops.get("detected", 0)
        print(
            f"loop={action:8} non-empty answer inside the budget: {answered}/{len(prompts)}"
            f" ({answered / len(prompts):.0%})  ran to the length limit: {length}/{len(prompts)}"
            f"  finish reasons: {reasons}  loops detected: {detected}  tokens cut: {cut}"
        )


def budget(model: qwq.Model, budgets: list[int]) -> None:
    print("\n## budget: reasoning length against the budget (answer budget 64)")
    print(
        f"{'format':12} {'budget':>6} {'reasoning tokens (per prompt)':>30} {'|error| at budget':>17} "
        f"{'ended earlier':>13} {'answered':>9}"
    )
    for fmt, name in ((QWQ_PREVIEW, "qwq-preview"), (THINK, "think")):
        for value in budgets:
            lengths, errors, early, answered = [], [], 0, 0
            for text in BUDGET_PROMPTS:
                completion = _run(
                    model,
                    text,
                    fmt,
                    max_tokens=value + 200,
                    max_thinking_tokens=value,
                    max_answer_tokens=64,
                    loop="off",
                )
                thinking = completion.report["thinking"]
                lengths.append(thinking["tokens"])
                if thinking["budget_reached"]:
                    errors.append(abs(thinking["tokens"] - value))
                else:  # the model closed (or ended) its reasoning before the budget
                    early += 1
                answered += bool(completion.answer.strip())
            error, asked = max(errors, default=0), len(BUDGET_PROMPTS)
            print(f"{name:12} {value:>6} {str(lengths):>30} {error:>17} {early:>13} {answered:>6}/{asked}")


def overhead(model: qwq.Model, new_tokens: int, repeats: int) -> None:
    text = "Write a long, detailed explanation of how binary search works, with an example."
    settings = {
        "every control off": {"loop": "off"},
        "loop detector on": {"loop": "recover"},
        "detector + language mask": {"loop": "recover", "language_guard": "enforce", "language": "en"},
    }
    rates: dict[str, list[float]] = {name: [] for name in settings}
    for _ in range(repeats):
        for name, fields in settings.items():
            completion = _run(model, text, QWQ_PREVIEW, max_tokens=new_tokens, ignore_eos=True, **fields)
            rates[name].append(completion.stats.generate_rate)
    base = statistics.median(rates["every control off"])
    print(f"\n## overhead: decode tok/s, {new_tokens} greedy tokens, median of {repeats} (interleaved)")
    for name, values in rates.items():
        rate = statistics.median(values)
        cost = (1 / rate - 1 / base) * 1e6
        print(f"{name:28} {rate:8.2f} tok/s  ratio {rate / base:.3f}  per-token cost {cost:+8.0f} µs")


_WORKER = """
import json, sys, torch
import qwq
from qwq.benchmark import run_benchmark
torch.manual_seed(0)
model = qwq.load("qwen2.5-coder:0.5b", quant="int4", context_length=1024)
result = run_benchmark(model, 256, int(sys.argv[1]), 1)
print(json.dumps(result.decode_tokens_per_s.median))
"""


def before_after(before_src: Path, new_tokens: int, rounds: int) -> None:
    rates: dict[str, list[float]] = {"before": [], "after": []}
    for _ in range(rounds):
        for version, src in (("before", before_src), ("after", ROOT / "src")):
            out = subprocess.run(
                [sys.executable, "-c", _WORKER, str(new_tokens)],
                capture_output=True,
                text=True,
                check=True,
                env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin", "HOME": str(Path.home())},
            )
            rates[version].append(json.loads(out.stdout.strip().splitlines()[-1]))
    before, after = statistics.median(rates["before"]), statistics.median(rates["after"])
    print(f"\n## before/after, every control off (plain model), decode tok/s, median of {rounds} rounds")
    print(f"before {before:.2f}  after {after:.2f}  after/before {after / before:.3f}  (runs: {rates})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=10, help="looping prompts to run")
    parser.add_argument("--max-tokens", type=int, default=1200)
    parser.add_argument("--budgets", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--before-src", type=Path)
    parser.add_argument("--parts", nargs="+", default=["recovery", "budget", "overhead", "before-after"])
    args = parser.parse_args()
    print(f"# reasoning controls — {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    started = time.perf_counter()
    model = qwq.load("qwen2.5-coder:0.5b", quant="int4", context_length=2048)
    print(f"loaded in {time.perf_counter() - started:.1f} s")
    if "recovery" in args.parts:
        recovery(model, args.limit, args.max_tokens)
    if "budget" in args.parts:
        budget(model, args.budgets)
    if "overhead" in args.parts:
        overhead(model, args.new_tokens, args.repeats)
    if "before-after" in args.parts and args.before_src:
        before_after(args.before_src, args.new_tokens, args.repeats)


if __name__ == "__main__":
    main()
