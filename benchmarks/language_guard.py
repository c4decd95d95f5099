"""The language guard's cost and effect in one run, side by side, with the mask off and with enforce {"latin"}:

- decode tok/s: the same prompts, greedy, a fixed number of new tokens (EOS ignored), the two modes alternated
  prompt by prompt over `--rounds` rounds (so the machine's drift falls on both); the median of each;
- accuracy on MATH-500 (/work/shared/data/math500.jsonl, the first `--limit` level-1 problems, which a 0.5B
  model can solve), graded by the last \\boxed{} (else the last number) against the reference after a simple
  normalisation, and the mixing rate of those replies (foreign letters / letters);
- the mixing rate on Chinese questions, whose unguarded replies are Chinese.

    python benchmarks/language_guard.py [--limit 20] [--max-tokens 320] [--model qwen2.5-coder:0.5b]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from pathlib import Path

import torch

import qwq
from qwq.reasoning.language import LanguageMask, mixing, script_table

DATA = Path("/work/shared/data/math500.jsonl")
LATIN = frozenset({"latin"})
MATH_PROMPT = "{problem}\nPlease reason step by step, and put your final answer within \\boxed{{}}."
SPEED_PROMPTS = ["请用中文解释什么是质数。", "Explain what a hash table is.", "用中文介绍一下长城。", "Write a haiku."]
CHINESE_PROMPTS = [
    "请用中文解释什么是质数。",
    "用中文简单介绍一下北京。",
    "请用中文回答：为什么天空是蓝色的？",
    "什么是机器学习？请用中文回答。",
    "请解释一下光合作用。",
    "如何学习编程？给我一些建议。",
    "请用中文写一首关于春天的短诗。",
    "中国的四大发明是什么？",
]


def generate(model: qwq.Model, question: str, guard: LanguageMask | None, max_tokens: int, ignore_eos: bool = False):
    """The greedy reply to one user message, and its Completion (for the timings)."""
    tokenizer = model.tokenizer
    ids = tokenizer.encode(tokenizer.apply_chat_template([{"role": "user", "content": question}]))
    processors = (lambda sequence, logits: guard(logits),) if guard else ()
    params = model.params(max_new_tokens=max_tokens, temperature=0, ignore_eos=ignore_eos)
    completion = model.complete(model.request(ids, params, processors=processors))
    return "".join(completion), completion


def last_boxed(text: str) -> str | None:
    """The contents of the last \\boxed{...}, braces balanced."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, begin = 0, start + len("\\boxed{")
    for index in range(begin - 1, len(text)):
        depth += {"{": 1, "}": -1}.get(text[index], 0)
        if depth == 0:
            return text[begin:index]
    return None


def normalise(answer: str) -> str:
    answer = re.sub(r"\\text\{([^}]*)\}", r"\1", answer)
    answer = answer.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("^\\circ", "")
    for noise in ("\\left", "\\right", "\\!", "\\,", "\\;", "$", "\\%", "%", " "):
        answer = answer.replace(noise, "")
    return answer.rstrip(".").removeprefix("x=")


def correct(reply: str, reference: str) -> bool:
    answer = last_boxed(reply)
    if answer is None:
        numbers = re.findall(r"-?\d+(?:\.\d+)?", reply.replace(",", ""))
        answer = numbers[-1] if numbers else ""
    got, want = normalise(answer), normalise(reference)
    if got == want:
        return True
    try:
        return abs(float(got.replace(",", "")) - float(want)) < 1e-9
    except ValueError:
        return False


def per_call_us(operation, logits: torch.Tensor, calls: int = 2000) -> float:
    """Microseconds one call of `operation` on a vocabulary-sized logits row takes, averaged."""
    operation(logits)
    start = time.perf_counter()
    for _ in range(calls):
        operation(logits)
    return (time.perf_counter() - start) / calls * 1e6


def rate(counts: list[tuple[int, int]]) -> str:
    foreign, letters = sum(f for f, _ in counts), sum(n for _, n in counts)
    return f"{100 * foreign / max(letters, 1):.2f}% ({foreign}/{letters})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2.5-coder:0.5b")
    parser.add_argument("--quant", default="int4")
    parser.add_argument("--limit", type=int, default=20, help="MATH-500 problems (default 20)")
    parser.add_argument("--max-tokens", type=int, default=320, help="new tokens per maths reply")
    parser.add_argument("--speed-tokens", type=int, default=64, help="new tokens per speed run")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the speed prompts")
    parser.add_argument("--chinese", type=int, default=len(CHINESE_PROMPTS), help="Chinese questions for mixing")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    started = time.perf_counter()
    model = qwq.load(args.model, quant=args.quant, context_length=1024)
    table_start = time.perf_counter()
    table = script_table(model.tokenizer)
    table_seconds = time.perf_counter() - table_start
    modes = {"off": None, "enforce": LanguageMask(table, LATIN)}

    speeds: dict[str, list[float]] = {mode: [] for mode in modes}
    for round_index in range(args.rounds):
        for index, prompt in enumerate(SPEED_PROMPTS):
            order = list(modes) if (round_index + index) % 2 == 0 else list(modes)[::-1]
            for mode in order:
                _, completion = generate(model, prompt, modes[mode], args.speed_tokens, ignore_eos=True)
                speeds[mode].append(completion.stats.generate_rate)

    problems = [row for row in map(json.loads, DATA.read_text(encoding="utf-8").splitlines()) if row["level"] == 1]
    problems = problems[: args.limit]
    solved, identical = {mode: 0 for mode in modes}, 0
    maths_mixing: dict[str, list[tuple[int, int]]] = {mode: [] for mode in modes}
    for row in problems:
        replies = []
        for mode, guard in modes.items():
            reply, _ = generate(model, MATH_PROMPT.format(problem=row["problem"]), guard, args.max_tokens)
            solved[mode] += correct(reply, row["answer"])
            maths_mixing[mode].append(mixing(reply, LATIN))
            replies.append(reply)
        identical += replies[0] == replies[1]

    chinese_mixing: dict[str, list[tuple[int, int]]] = {mode: [] for mode in modes}
    for question in CHINESE_PROMPTS[: args.chinese]:
        for mode, guard in modes.items():
            reply, _ = generate(model, question, guard, 64)
            chinese_mixing[mode].append(mixing(reply, LATIN))

    logits = torch.randn(model.config.vocab_size)
    mask = table.mask_for(LATIN)
    mask_us = per_call_us(modes["enforce"], logits)
    masked_fill_us = per_call_us(lambda row: row.masked_fill(mask, float("-inf")), logits)

    off, on = statistics.median(speeds["off"]), statistics.median(speeds["enforce"])
    rows = [
        (f"decode tok/s (median of {len(speeds['off'])} runs)", f"{off:.2f}", f"{on:.2f}  ({on / off:.3f}x)"),
        (
            f"MATH-500 level 1, {len(problems)} problems",
            f"{solved['off']}/{len(problems)}",
            f"{solved['enforce']}/{len(problems)}",
        ),
        ("maths replies unchanged by the mask", "", f"{identical}/{len(problems)}"),
        ("mixing rate, maths replies", rate(maths_mixing["off"]), rate(maths_mixing["enforce"])),
        (
            f"mixing rate, {len(chinese_mixing['off'])} Chinese questions",
            rate(chinese_mixing["off"]),
            rate(chinese_mixing["enforce"]),
        ),
    ]
    print(f"{args.model} {args.quant}, {torch.get_num_threads()} threads")
    print(f"script table built in {table_seconds:.2f} s (the vocabulary's bytes included)")
    print(f"{'':44} {'off':>22} {'enforce {latin}':>30}")
    for label, left, right in rows:
        print(f"{label:44} {left:>22} {right:>30}")
    print(f"the mask per token: {mask_us:.1f} us (a bool masked_fill would take {masked_fill_us:.1f} us)")
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
