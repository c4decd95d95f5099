"""Build tests/data/loops/: a labelled corpus of looping and healthy model output for the loop detector.

    python scripts/make_loop_corpus.py                 # about 16 minutes the first time, seconds after
    python scripts/make_loop_corpus.py --threads 2 --cache DIR --out tests/data/loops   # the defaults but DIR

The cache defaults to $QWQ_HOME/loop-corpus/qwen2.5-coder-0.5b-int4 (~/.cache/qwq/...).

1. Real traces: each prompt below is run on qwen2.5-coder:0.5b (int4, 4096 context), greedy or at temperature 0.3
   with a fixed seed; traces are cached (one JSON file per prompt), so a re-run only relabels and rewrites.
2. Each real trace is labelled by a brute-force labeller that shares no code with the detector: every period p
   is tried over the whole trace (O(n^2)), on the tokens with list counters ("12." at a line start) masked:
   - exact: a span that is p-periodic for 3 copies and 64 tokens;
   - near: a span where each of copies 2, 3 and 4 has 80% of its 4-grams recurring p (+-2) tokens back.
   A multiple of a period is a period too, so the shortest period found is the loop (onset: where its first
   copy begins), unless another is a loop of its own that ends before it, or starts earlier at a period at most
   1.5 times as long. Every label was read by eye; those the eye disagreed with are overridden in REVIEWED.
3. Spliced: healthy real traces with a loop built into them: a block of their own text repeated (verbatim),
   repeated with numbers changed or 1-2 words swapped per copy (near-verbatim), or a short phrase repeated
   50-300 times (degenerate); onset and period come from the construction.
4. Hard negatives written here: markdown tables, enumerated cases, code with similar lines, multiplication
   tables, "Wait," with progress, lists of numbers, repeated short lines, a block re-checked once or twice.
Everything random draws from random.Random(SEED); the same cache gives the same corpus byte for byte.
Writes corpus.jsonl (one example a line: id, source, kind, token_ids, loop, onset, period, note) and
looping_prompts.json (the greedy prompts that loop within 1,200 tokens, by the labeller and the detector).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qwq.paths import qwq_home
from qwq.reasoning.loops import find_loop
from qwq.tokenizer.tokenizer import Tokenizer
from qwq.tokenizer.vocabulary import vocabulary

SEED = 20250101
MODEL = "qwen2.5-coder:0.5b"
ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Prompt:
    text: str
    temperature: float = 0.0
    seed: int = 0
    max_new_tokens: int = 1200

    @property
    def key(self) -> str:
        fields = [self.text, self.temperature, self.seed, self.max_new_tokens]
        return hashlib.sha256(json.dumps(fields).encode()).hexdigest()[:16]


LOOPY = [  # prompts that tend to make a small model loop (long enumerations, "never stop", re-check forever)
    "A farmer has 17 sheep. All but 9 run away. How many are left? Think step by step and check your work many "
    "times before answering.",
    "Repeat the sentence 'I will not give up.' as many times as you can.",
    "List all prime numbers below 10000.",
    "Write the numbers from 1 to 2000 in English words, separated by commas.",
    "请一步一步地思考，并反复检查你的答案：一个数加上它的一半等于15，这个数是多少？",
    "Solve x^2 - 5x + 6 = 0. Show every step, then verify the answer again, and again, and again, at least ten times.",
    "Write a very long essay about the number seven. Never stop writing.",
    "What is the last digit of 7^2024? Think step by step. Double-check each step. Then check again.",
    "Generate a list of 500 unique English words related to the ocean.",
    "Say 'yes' 300 times.",
    "How many r's are in the word strawberry? Count very carefully letter by letter, and recount many times to be "
    "sure.",
    "写一个很长很长的故事，关于一只小猫。不要停。",
    "Print the multiplication table from 1 x 1 up to 30 x 30.",
    "Give me 200 different names for a pet dog, numbered.",
    "A train leaves at 3:15 pm and travels 240 km at 80 km/h. When does it arrive? Reason step by step and verify "
    "your answer repeatedly.",
    "Continue this sequence forever: 1, 2, 1, 2, 1, 2,",
    "Write the word 'loop' one thousand times.",
    "Describe the water cycle. Then describe it again in more detail. Then again in even more detail. Keep going.",
    "计算 1 到 100 所有整数的和，一步一步写出每一次加法。",
    "Give me 100 interesting facts about cats, numbered.",
    "Compute 2^64 by repeated doubling, writing out every step, and check each step twice.",
    "Write 50 different jokes about programmers.",
    "List every country in the world with its capital city.",
    "列出100个常用的汉语成语，并解释每一个。",
    "Write a poem with 100 stanzas about the sea.",
]
HEALTHY = [
    "Write a Python function that returns the n-th Fibonacci number, with a docstring and a short test.",
    "Explain what a hash table is in three short paragraphs.",
    "Write an SQL query that returns the ten most recent orders per customer, and explain it.",
    "Write a bash script that backs up a directory to a tar.gz file with the date in its name.",
    "What is the capital of Australia? Answer in one sentence.",
    "Write a JavaScript class for a stack with push, pop and peek, and example usage.",
    "What is 15% of 80? Explain briefly.",
    "Write a Python function that checks whether a string is a palindrome.",
    "Summarize the causes of the French Revolution in a short paragraph.",
    "Convert 72 degrees Fahrenheit to Celsius, showing the formula.",
    "Write a C function that reverses a linked list, with comments.",
    "If a rectangle has a perimeter of 30 and a length of 9, what is its area? Think step by step.",
    "用三句话介绍一下长城。",
    "Explain the difference between a list and a tuple in Python, with examples.",
    "Write a Rust function that sums the even numbers in a vector.",
    "Write a short markdown table comparing three sorting algorithms by time complexity.",
    "Solve the system: 2x + y = 7 and x - y = 2. Check your answer.",
    "What are the first 10 Fibonacci numbers? Explain how each is computed.",
    "Write a Go HTTP server that responds with hello world.",
    "Write a Java class representing a bank account with deposit and withdraw methods.",
]
PROMPTS = [
    *(Prompt(text) for text in LOOPY),
    *(Prompt(text, max_new_tokens=600) if i >= 6 else Prompt(text) for i, text in enumerate(HEALTHY)),
    Prompt(LOOPY[13], 0.3, 1),
    Prompt(LOOPY[8], 0.3, 1),
    Prompt(LOOPY[6], 0.3, 2),
    Prompt(LOOPY[7], 0.3, 3),
    Prompt(LOOPY[11], 0.3, 4),
    Prompt(LOOPY[17], 0.3, 5),
    Prompt("How do I create a virtual environment in Python? Give the commands.", 0.3, 7, 600),
    Prompt("Write a regular expression that matches an email address and explain it.", 0.3, 8, 600),
    Prompt("A shop sells pens at 3 for $2. How much do 12 pens cost? Check your work.", 0.3, 9, 600),
    Prompt("Explain how binary search works and write it in Python.", 0.3, 10, 600),
]

# Labels the eye corrected after reading the trace: cache key -> (loop, onset, period, why)
REVIEWED: dict[str, tuple[bool, int | None, int | None, str]] = {
    "54f5022451ba1415": (
        True,
        58,
        61,
        "near-verbatim: 'The number seven is also a perfect <ordinal> power, ...' with the ordinal swapped in 4 "
        "places per copy, below the labeller's 80% bar; the first copy is the 'prime number' sentence",
    ),
    "395882b088fc3716": (
        True,
        173,
        206,
        "near-verbatim: from 7^4 the values 2401, 12841, 87641, 6561, 40321 cycle every 5 steps while only the "
        "exponent counts up; the block grows as the exponent gains digits",
    ),
    "87c140eb415abcb5": (
        True,
        41,
        24,
        "near-verbatim: 'We will use this result to find the last digit of \\(7^k\\), which is V.' with k and V "
        "changed, from the first 'Then we will use this result' on; the labeller's 80% bar starts it where V cycles",
    ),
    "30d5ac0711932c93": (
        True,
        87,
        34,
        "near-verbatim: the paragraph '小明每天都会在森林中散步...' from its first copy (the 3rd paragraph), "
        "alternating with a few words swapped (跑步, 食物/事物), then verbatim; the labeller starts it at the 5th",
    ),
}


# -- real traces
def generate(prompts: Sequence[Prompt], cache: Path, threads: int) -> dict[str, list[int]]:
    """Each prompt's new token ids, from the cache or generated (the model is loaded only when one is missing)."""
    cache.mkdir(parents=True, exist_ok=True)
    traces, model = {}, None
    for prompt in prompts:
        path = cache / f"{prompt.key}.json"
        if not path.exists():
            if model is None:
                import torch

                import qwq

                torch.set_num_threads(threads)
                model = qwq.load(MODEL, quant="int4", context_length=4096)
            chat = model.tokenizer.apply_chat_template([{"role": "user", "content": prompt.text}])
            ids = model.tokenizer.encode(chat)
            out = model.generate(
                ids, max_new_tokens=prompt.max_new_tokens, temperature=prompt.temperature, seed=prompt.seed
            )
            record = {
                "prompt": prompt.text,
                "temperature": prompt.temperature,
                "seed": prompt.seed,
                "max_new_tokens": prompt.max_new_tokens,
                "token_ids": out,
            }
            path.write_text(json.dumps(record))
            print(f"generated {len(out)} tokens: {prompt.text[:60]!r}", flush=True)
        traces[prompt.key] = json.loads(path.read_text())["token_ids"]
    return traces


# -- the independent labeller
class Labeller:
    """Brute force over every period, on tokens with list counters masked (the detector's rules are not used)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        pieces = vocabulary(tokenizer).token_bytes
        self.digit = np.array([p.isdigit() for p in pieces])
        self.newline = np.array([b"\n" in p for p in pieces])
        self.blank = np.array([not p.strip() for p in pieces])
        self.counter_mark = np.array([p[:1] in (b".", b")", b":") for p in pieces])

    def units(self, ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """The tokens with each list counter (a line-leading number before ".", ")" or ":") as one -1, and
        where each unit begins in `ids` (one entry more: the end)."""
        units, starts, line_start, i = [], [], True, 0
        while i < len(ids):
            end = i
            while end < len(ids) and self.digit[ids[end]]:
                end += 1
            if line_start and end > i and end < len(ids) and self.counter_mark[ids[end]]:
                units.append(-1)
                starts.append(i)
                i = end
                continue
            units.append(ids[i])
            starts.append(i)
            line_start = bool(self.newline[ids[i]]) or (line_start and bool(self.blank[ids[i]]))
            i += 1
        return np.array(units, dtype=np.int64), np.array(starts + [len(ids)], dtype=np.int64)

    def label(self, ids: Sequence[int]) -> tuple[int, int, str] | None:
        """(onset, period, how) of the loop in `ids`, in tokens, or None."""
        if len(ids) < 64:
            return None
        units, starts = self.units(ids)
        found = sorted(self._exact(units, starts) + self._near(units, starts), key=lambda hit: hit[1])
        if not found:
            return None
        # a multiple of a loop's period is a period too, and its tolerance reaches further back: the shortest
        # period wins, unless a longer one is a loop of its own that ends before, or starts earlier at about
        # the same period
        best = found[0]
        for hit in found[1:]:
            copies = 3 if hit[2] == "exact" else 4
            if hit[0] + copies * hit[1] <= best[0] or (hit[1] <= 1.5 * best[1] and hit[0] < best[0]):
                best = hit
        return best

    @staticmethod
    def _exact(u: np.ndarray, starts: np.ndarray) -> list[tuple[int, int, str]]:
        """For each period, the earliest span that is p-periodic for 3 copies and 64 tokens."""
        found = []
        for p in range(1, len(u) // 3 + 1):
            same = np.concatenate([[False], u[p:] == u[:-p], [False]]).astype(np.int8)
            edges = np.diff(same)
            for a, b in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True):
                span = starts[b + p] - starts[a]  # units a .. b+p-1 are p-periodic
                if b - a >= 2 * p and span >= 64:
                    found.append((int(starts[a]), int(starts[a + p] - starts[a]), "exact"))
                    break
        return found

    @staticmethod
    def _near(u: np.ndarray, starts: np.ndarray) -> list[tuple[int, int, str]]:
        """For each period, the earliest span where copies 2, 3 and 4 of a block each have 80% of their
        4-grams recurring one block (+-2 units) back."""
        key = 1_000_003
        grams = ((u[:-3] * key + u[1:-2]) * key + u[2:-1]) * key + u[3:]  # wraps around int64: still a key
        found = []
        for p in range(8, len(grams) // 4 + 1):
            x = np.arange(p + 3, len(grams))
            recur = np.zeros(len(grams), dtype=bool)
            for shift in range(-2, 3):
                recur[x] |= grams[x] == grams[x - p - shift]
            total = np.concatenate([[0], np.cumsum(recur)])
            share = (total[p:] - total[:-p]) / p  # share[k]: the part of grams k .. k+p-1 that recur
            good = np.flatnonzero((share[p : -2 * p] >= 0.8) & (share[2 * p : -p] >= 0.8) & (share[3 * p :] >= 0.8))
            good = good[starts[good + 4 * p] - starts[good] >= 64]
            if len(good) == 0:
                continue
            first = int(good[0]) + p + int(np.argmax(recur[good[0] + p : good[0] + 2 * p]))  # copy 2: first recurring
            found.append((int(starts[first - p]), int(starts[first] - starts[first - p]), "near"))
        return found


# -- splicing loops into healthy text
def word_tokens(ids: Sequence[int], pieces: Sequence[bytes]) -> list[int]:
    return [t for t in ids if pieces[t].startswith(b" ") and pieces[t][1:].isalpha() and len(pieces[t]) > 3]


def line_starts(ids: Sequence[int], pieces: Sequence[bytes]) -> list[int]:
    return [i + 1 for i, t in enumerate(ids[:-1]) if pieces[t].endswith(b"\n")]


def periodic_onset(ids: Sequence[int], onset: int, period: int) -> int:
    """The first copy's true start: a block whose last tokens also precede it is periodic a little earlier."""
    while onset > 0 and ids[onset - 1] == ids[onset - 1 + period]:
        onset -= 1
    return onset


def mutate(
    block: Sequence[int],
    rng: random.Random,
    pieces: Sequence[bytes],
    words: Sequence[int],
    digits: Sequence[int],
    how: str,
) -> list[int]:
    """A copy of the block with 1-3 of its numbers changed and/or 1-2 of its words swapped."""
    copy = list(block)
    if how in ("words", "both"):
        swappable = set(words)
        spots = [i for i, t in enumerate(copy) if t in swappable]
        for i in rng.sample(spots, min(len(spots), rng.choice((1, 2)))):
            copy[i] = rng.choice(words)
    if how in ("numbers", "both"):
        numbers = []  # (start, end) of each run of digit tokens
        for i, t in enumerate(copy):
            if pieces[t].isdigit():
                if numbers and numbers[-1][1] == i:
                    numbers[-1] = (numbers[-1][0], i + 1)
                else:
                    numbers.append((i, i + 1))
        for start, end in sorted(rng.sample(numbers, min(len(numbers), rng.randint(1, 3))), reverse=True):
            copy[start:end] = [rng.choice(digits) for _ in range(rng.randint(1, 4))]
    return copy


def texty(block: Sequence[int], pieces: Sequence[bytes]) -> bool:
    """Mostly words: what a model re-says in a near-verbatim loop (a block of numbers changed is just noise)."""
    digits = sum(pieces[t].isdigit() for t in block)
    letters = sum(any(chr(b).isalpha() for b in pieces[t]) or max(pieces[t], default=0) >= 0xC0 for t in block)
    return digits <= 0.1 * len(block) and letters >= 0.4 * len(block)


def spliced(hosts: list[tuple[str, list[int]]], tokenizer: Tokenizer, rng: random.Random) -> list[dict]:
    pieces = vocabulary(tokenizer).token_bytes
    digits = [tokenizer.encode(str(d))[0] for d in range(10)]
    examples = []

    def pick_block(ids: list[int], low: int, high: int) -> tuple[int, int] | None:
        starts = [s for s in line_starts(ids, pieces) if s + low < len(ids)]
        for _ in range(50):
            start = rng.choice(starts) if starts and rng.random() < 0.8 else rng.randrange(0, len(ids) - low)
            length = rng.randint(low, min(high, len(ids) - start))
            if length >= low:
                return start, length
        return None

    for n in range(45):  # verbatim: a block of the host's own text repeated 4-30 times
        name, ids = hosts[n % len(hosts)]
        block = pick_block(ids, 17, 250)
        if block is None:
            continue
        start, length = block
        copies = rng.randint(4, max(4, min(30, 2500 // length)))
        tail = ids[start + length :] if rng.random() < 0.5 else []
        trace = ids[: start + length] + ids[start : start + length] * (copies - 1) + tail
        onset = periodic_onset(trace, start, length)
        examples.append(
            example(
                f"spliced-verbatim-{n}",
                "spliced",
                "verbatim",
                trace,
                True,
                onset,
                length,
                f"host {name}: tokens {start}..{start + length} repeated {copies} times",
            )
        )
    for n in range(45):  # near-verbatim: each copy with 1-3 numbers changed and/or 1-2 words swapped
        name, ids = hosts[(n * 7 + 3) % len(hosts)]
        for _ in range(60):
            block = pick_block(ids, 40, 200)
            if block is not None and texty(ids[block[0] : block[0] + block[1]], pieces):
                break
        else:
            continue
        start, length = block
        original = ids[start : start + length]
        words = word_tokens(ids, pieces)
        how = ("numbers", "words", "both")[n % 3]
        if how != "words" and not any(pieces[t].isdigit() for t in original):
            how = "words"
        copies = rng.randint(5, max(5, min(20, 2500 // length)))
        trace = ids[: start + length]
        for _ in range(copies - 1):
            trace += mutate(original, rng, pieces, words, digits, how)
        trace += ids[start + length :] if rng.random() < 0.5 else []
        examples.append(
            example(
                f"spliced-near-{n}",
                "spliced",
                "near-verbatim",
                trace,
                True,
                start,
                length,
                f"host {name}: tokens {start}..{start + length}, {copies} copies, {how} changed",
            )
        )
    phrases = [
        "Wait, ",
        "Let me check again. ",
        "I think",
        " the",
        "\n",
        "Hmm.",
        "So the answer is 12. ",
        "我们再检查一下。",
        "Therefore, ",
        " and so on,",
        "Yes.\n",
        "Let me re-read the problem.\n",
        "**Step 3:** verify.\n",
        "x = 2\n",
        "但是，",
        "OK, so",
        "...",
        " No, wait.",
    ]
    for n in range(36):  # degenerate: a short phrase or line repeated 50-300 times
        name, ids = hosts[(n * 5 + 1) % len(hosts)]
        if n % 3 == 2:  # a short line of the host's own
            bounds = line_starts(ids, pieces)
            lines = [(s, e) for s, e in zip(bounds, bounds[1:], strict=False) if 2 <= e - s <= 16]
            lines = [(s, e) for s, e in lines if any(pieces[t].strip().isalpha() for t in ids[s:e])]  # text
            if not lines:
                continue
            s, e = rng.choice(lines)
            phrase = ids[s:e]
            start = e
        else:
            phrase = tokenizer.encode(phrases[n % len(phrases)])
            start = rng.choice(line_starts(ids, pieces) or [len(ids)])
        copies = rng.randint(max(50, -(-64 // len(phrase))), 300)
        counted = n % 4 == 3  # "N. phrase" lines: a counter that changes, the rest verbatim
        if counted and not pieces[phrase[-1]].endswith(b"\n"):
            phrase = phrase + tokenizer.encode("\n")
        loop = []
        for k in range(copies):
            loop += (tokenizer.encode(f"{k + 1}. ") + phrase) if counted else phrase
        trace = ids[:start] + loop + (ids[start:] if rng.random() < 0.3 else [])
        period = len(phrase) if not counted else len(loop) // copies
        onset = periodic_onset(trace, start, len(phrase)) if not counted else start
        examples.append(
            example(
                f"spliced-degenerate-{n}",
                "spliced",
                "degenerate",
                trace,
                True,
                onset,
                period,
                f"host {name}: {tokenizer.decode(phrase)!r} x{copies}" + (" numbered" if counted else ""),
            )
        )
    return examples


# -- hard negatives
NAMES = [
    "Alice",
    "Bob",
    "Carol",
    "Dave",
    "Erin",
    "Frank",
    "Grace",
    "Heidi",
    "Ivan",
    "Judy",
    "Mallory",
    "Niaj",
    "Olivia",
    "Peggy",
    "Rupert",
    "Sybil",
    "Trent",
    "Victor",
    "Walter",
    "Yolanda",
]
ITEMS = ["apples", "pears", "plums", "grapes", "lemons", "melons", "cherries", "figs", "dates", "limes"]


def tables(rng: random.Random) -> list[str]:
    out = []
    for _ in range(4):
        rows = rng.randint(5, 25)
        head = "| Name | Age | City | Score |\n|------|-----|------|-------|\n"
        body = "".join(
            f"| {rng.choice(NAMES)} | {rng.randint(18, 80)} | {rng.choice(['Paris', 'Oslo', 'Lima', 'Rome'])}"
            f" | {rng.randint(0, 100)} |\n"
            for _ in range(rows)
        )
        out.append(f"Here is the data as a table:\n\n{head}{body}\nThe average score is {rng.randint(20, 90)}.\n")
    for power in (2, 3):
        rows = "".join(f"| {n} | {n**power} |\n" for n in range(1, 21))
        out.append(f"| n | n^{power} |\n|---|---|\n{rows}")
    algos = ["Bubble sort", "Insertion sort", "Merge sort", "Quick sort", "Heap sort", "Counting sort"]
    rows = "".join(f"| {a} | O(n^2) | O(n log n) | {'Yes' if i % 2 else 'No'} |\n" for i, a in enumerate(algos))
    out.append(f"| Algorithm | Worst | Best | Stable |\n| --- | --- | --- | --- |\n{rows}")
    rows = "".join(
        f"| {k} | {rng.choice(NAMES)} | Yes | Yes | {rng.choice(['No', 'Yes'])} | N/A |\n" for k in range(20)
    )
    out.append(f"| # | Owner | Tested | Reviewed | Shipped | Notes |\n|---|---|---|---|---|---|\n{rows}")
    grid = "".join("| " + " | ".join(rng.choice("XO.") for _ in range(5)) + " |\n" for _ in range(8))
    out.append(f"The board after move 12:\n\n| a | b | c | d | e |\n|---|---|---|---|---|\n{grid}")
    return out


def enumerations(rng: random.Random) -> list[str]:
    out = []
    for _ in range(3):  # templated one-line cases, only the numbers change
        total = rng.randint(8, 15)
        lines = "".join(
            f"Case {k}: x = {k}, so y = {total} - {k} = {total - k}, "
            f"which is {'even' if (total - k) % 2 == 0 else 'odd'}.\n"
            for k in range(1, rng.randint(6, 12))
        )
        out.append(f"We need x + y = {total} with x, y positive.\n{lines}So we count the cases where y is even.\n")
    for _ in range(3):  # multi-line cases with different reasoning each time
        cases = []
        for k in range(1, rng.randint(4, 7)):
            a, b = rng.randint(1, 9), rng.randint(1, 9)
            verdict = rng.choice(
                [
                    "This works.",
                    "This fails, since the sum is too large.",
                    "This is a duplicate of an earlier case.",
                    f"Then the remainder is {a * b % 7}, not zero.",
                ]
            )
            cases.append(
                f"**Case {k}:** the first die shows {a} and the second shows {b}.\n"
                f"The sum is {a + b} and the product is {a * b}.\n{verdict}\n"
            )
        out.append(
            "Let us enumerate the cases.\n\n" + "\n".join(cases) + "\nCounting the cases that work gives the answer.\n"
        )
    for _ in range(2):  # multi-line templated checks of n = 1, 2, ...: the same words, new numbers each time
        cases = []
        for n in range(1, rng.randint(7, 11)):
            value = n * n + n + 41
            cases.append(
                f"For n = {n}:\nWe compute n^2 + n + 41 = {n * n} + {n} + 41 = {value}.\n"
                f"Is {value} prime? Its square root is about {value**0.5:.1f}, and no prime up to that divides it, "
                f"so yes.\n"
            )
        out.append("Check Euler's polynomial for small n.\n\n" + "\n".join(cases) + "\nAll of these are prime.\n")
    for _ in range(2):
        people = rng.sample(NAMES, 6)
        lines = "".join(
            f"- If {p} is the liar, then {q} told the truth, so {r} must be {rng.choice(['guilty', 'innocent'])}.\n"
            for p, q, r in zip(people, people[1:], people[2:], strict=False)
        )
        out.append(f"Suppose exactly one of them lies.\n{lines}Only one assignment is consistent.\n")
    return out


def code_blocks(rng: random.Random) -> list[str]:
    out = []
    for _ in range(2):
        fields = rng.sample(
            ["name", "age", "email", "phone", "city", "zip", "country", "title", "score", "rank", "height", "weight"],
            10,
        )
        lines = "".join(f"        self.{f} = {f}\n" for f in fields)
        out.append(f"```python\nclass Record:\n    def __init__(self, {', '.join(fields)}):\n{lines}```\n")
    tests = "".join(
        f"    assert fib({n}) == {f}\n" for n, f in enumerate([0, 1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144])
    )
    out.append(f"```python\ndef test_fib():\n{tests}```\n")
    cases = "".join(
        f'    case {k}:\n        return "{w}";\n'
        for k, w in enumerate(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])
    )
    out.append(
        f'```c\nconst char *name(int d) {{\n  switch (d) {{\n{cases}    default:\n        return "?";\n  }}\n}}\n```\n'
    )
    items = "".join(
        f'  <li><a href="/{w.lower()}">{w}</a></li>\n'
        for w in ["Home", "About", "Blog", "Shop", "Help", "Contact", "Jobs", "Press"]
    )
    out.append(f'```html\n<ul class="nav">\n{items}</ul>\n```\n')
    getters = "".join(
        f"    public {t} get{f.title()}() {{\n        return this.{f};\n    }}\n\n"
        f"    public void set{f.title()}({t} {f}) {{\n        this.{f} = {f};\n    }}\n\n"
        for t, f in [("String", "name"), ("int", "age"), ("String", "email"), ("double", "balance"), ("long", "id")]
    )
    out.append(f"```java\npublic class Account {{\n{getters}}}\n```\n")
    regs = "".join(f"    mov r{k}, #{rng.randint(0, 255)}\n" for k in range(12))
    out.append(f"```asm\nsetup:\n{regs}    bx lr\n```\n")
    config = "".join(
        f'    "{k}": {rng.randint(1, 64)},\n'
        for k in ["workers", "threads", "retries", "timeout", "batch", "depth", "width", "port"]
    )
    out.append(f"```python\nCONFIG = {{\n{config}}}\n```\n")
    return out


def multiplication(rng: random.Random) -> list[str]:
    out = []
    for fmt in ("{a} x {b} = {c}", "{a} × {b} = {c}", "{b} * {a} = {c}", "{a} times {b} is {c}", "{a} × {b} = {c}。"):
        a, rows = rng.randint(2, 19), rng.randint(10, 20)
        lines = "\n".join(fmt.format(a=a, b=b, c=a * b) for b in range(1, rows + 1))
        out.append(f"The multiplication table of {a}:\n\n{lines}\n\nSo {a} x {rows} = {a * rows}.\n")
    lines = "\n".join(f"{b}. {7} x {b} = {7 * b}" for b in range(1, 21))
    out.append(f"Numbered:\n{lines}\n")
    return out


def waits(rng: random.Random) -> list[str]:
    out = []
    for _ in range(5):
        total, parts = rng.randint(40, 200), []
        value = total
        for _ in range(rng.randint(8, 16)):
            d = rng.randint(1, 9)
            value -= d
            parts.append(
                rng.choice(
                    [
                        f"Wait, I subtracted {d} {rng.choice(ITEMS)}, so now we have {value}.",
                        f"Wait, that means {value} + {d} = {value + d}, which matches.",
                        f"Wait, let me recheck: {value + d} minus {d} is {value}.",
                        f"Wait, {rng.choice(NAMES)} also gave away {d}, leaving {value}.",
                        f"Hmm, so after this step we are at {value}.",
                    ]
                )
            )
        out.append(f"We start with {total} items.\n" + "\n".join(parts) + f"\nSo the final answer is {value}.\n")
    for _ in range(3):  # a chain of verifications in one template, each checking the next step
        a, steps = rng.randint(2, 30), []
        for k in range(rng.randint(6, 9)):
            b = rng.randint(2, 30)
            steps.append(
                f"Wait, let me verify step {k + 1} once more: we had {a}, and adding {b} gives {a + b}, which is "
                f"what I wrote before, so this step is correct."
            )
            a += b
        out.append("Let me go back over the additions.\n" + "\n".join(steps) + f"\nSo the total is {a}.\n")
    return out


def number_lists(rng: random.Random) -> list[str]:
    primes = [n for n in range(2, 550) if all(n % d for d in range(2, int(n**0.5) + 1))]
    squares = [n * n for n in range(1, 60)]
    fib = [0, 1]
    while len(fib) < 60:
        fib.append(fib[-1] + fib[-2])
    return [
        "The primes below 550:\n" + "\n".join(map(str, primes)) + "\n",
        "Primes: " + ", ".join(map(str, primes[:80])) + ".\n",
        "Squares: " + ", ".join(map(str, squares)) + "\n",
        "Fibonacci numbers:\n" + "\n".join(f"{i + 1}. {f}" for i, f in enumerate(fib)) + "\n",
        "Random sample: " + " ".join(str(rng.randint(0, 999)) for _ in range(200)) + "\n",
        "[" + ", ".join(f"{rng.random():.3f}" for _ in range(80)) + "]\n",
    ]


def short_lines(rng: random.Random) -> list[str]:
    sections = "\n---\n\n".join(
        f"## Part {k}\n\n{rng.choice(NAMES)} reads the {k}th chapter of the book." for k in range(1, 12)
    )
    nested = "int main(void) {\n" + "".join(
        f"{'  ' * d}for (int i{d} = 0; i{d} < {rng.randint(2, 9)}; i{d}++) {{\n" for d in range(1, 5)
    )
    nested += "          work(i1, i2, i3, i4);\n" + "".join(f"{'  ' * d}}}\n" for d in range(4, 0, -1)) + "}\n"
    fences = "".join(f"```\n$ step {k}\n```\n\n" for k in range(1, 10))
    blank = "\n\n".join(f"Line {k} of the poem, {rng.choice(ITEMS)} and {rng.choice(ITEMS)}." for k in range(1, 15))
    closers = "\n".join("}" * (k % 3 + 1) + ";" for k in range(8))
    return [sections, nested, fences, blank, f"```js\n{closers}\n```\n"]


def rechecks(hosts: list[tuple[str, list[int]]], tokenizer: Tokenizer, rng: random.Random) -> list[dict]:
    """Healthy text that re-checks a block once (2 copies), or twice with its numbers or words changed."""
    pieces = vocabulary(tokenizer).token_bytes
    digits = [tokenizer.encode(str(d))[0] for d in range(10)]
    bridge = tokenizer.encode("\n\nLet me double-check that.\n\n")
    out = []
    for n in range(16):
        name, ids = hosts[(n * 3 + 2) % len(hosts)]
        starts = line_starts(ids, pieces) or [0]
        start = rng.choice(starts)
        length = min(len(ids) - start, rng.randint(30, 150))
        block = ids[start : start + length]
        copies = 2 if n % 2 == 0 else 3
        trace = ids[: start + length]
        for _ in range(copies - 1):
            copy = block if copies == 2 else mutate(block, rng, pieces, word_tokens(ids, pieces), digits, "both")
            trace += bridge + copy
        trace += ids[start + length :]
        what = "verbatim" if copies == 2 else "with changes"
        out.append(
            example(
                f"negative-recheck-{n}",
                "hard-negative",
                "recheck",
                trace,
                False,
                None,
                None,
                f"host {name}: a {length}-token block said {copies} times ({what})",
            )
        )
    return out


HARD_NEGATIVES: dict[str, Callable[[random.Random], list[str]]] = {
    "table": tables,
    "enumeration": enumerations,
    "code": code_blocks,
    "multiplication": multiplication,
    "wait": waits,
    "number-list": number_lists,
    "short-lines": short_lines,
}


def example(
    id_: str, source: str, kind: str, ids: Sequence[int], loop: bool, onset: int | None, period: int | None, note: str
) -> dict:
    return {
        "id": id_,
        "source": source,
        "kind": kind,
        "token_ids": list(map(int, ids)),
        "loop": loop,
        "onset": onset,
        "period": period,
        "note": note,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=qwq_home() / "loop-corpus" / "qwen2.5-coder-0.5b-int4")
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "data" / "loops")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from qwq.local_models import fetch
    from qwq.weights.gguf import GGUFFile

    tokenizer = Tokenizer.from_gguf(GGUFFile(fetch(MODEL)))
    traces = generate(PROMPTS, args.cache, args.threads)
    labeller, rng = Labeller(tokenizer), random.Random(SEED)
    examples, hosts, looping = [], [], []
    for n, prompt in enumerate(PROMPTS):
        ids = traces[prompt.key]
        found = labeller.label(ids)
        loop, onset, period = found is not None, *(found[:2] if found else (None, None))
        note = (
            f"{prompt.text[:80]!r} T={prompt.temperature} seed={prompt.seed}; labeller: {found[2] if found else 'none'}"
        )
        if prompt.key in REVIEWED:
            loop, onset, period, why = REVIEWED[prompt.key]
            note += f"; reviewed: {why}"
        kind = "healthy"
        if loop:
            kind = "degenerate" if period <= 16 else "verbatim" if found and found[2] == "exact" else "near-verbatim"
        examples.append(example(f"real-{n}-{prompt.key}", "real-0.5b", kind, ids, loop, onset, period, note))
        if not loop and len(ids) >= 100:
            hosts.append((f"real-{n}", ids))
        if loop and prompt.temperature == 0 and find_loop(ids, tokenizer) is not None:
            looping.append(prompt.text)
    examples += spliced(hosts, tokenizer, rng)
    for kind, make in HARD_NEGATIVES.items():
        for k, text in enumerate(make(rng)):
            examples.append(
                example(
                    f"negative-{kind}-{k}", "hard-negative", kind, tokenizer.encode(text), False, None, None, text[:80]
                )
            )
    examples += rechecks(hosts, tokenizer, rng)
    separator = tokenizer.encode("\n\n")
    for n in range(12):  # longer healthy text: three different healthy replies one after another
        picked = rng.sample(hosts, 3)
        ids = [t for k, (_, host) in enumerate(picked) for t in (separator if k else []) + host]
        note = "healthy replies " + ", ".join(name for name, _ in picked) + " one after another"
        examples.append(example(f"real-concat-{n}", "real-0.5b-concat", "healthy", ids, False, None, None, note))
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "corpus.jsonl").open("w") as f:
        for record in examples:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    (args.out / "looping_prompts.json").write_text(json.dumps(looping, ensure_ascii=False, indent=1) + "\n")
    positives = sum(e["loop"] for e in examples)
    print(f"{len(examples)} examples ({positives} loops), {len(looping)} looping prompts -> {args.out}")


if __name__ == "__main__":
    main()
