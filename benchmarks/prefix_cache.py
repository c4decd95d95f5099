"""Prefix caching: the second turn of a conversation with a long history, with the cache on and off, in one run.

Turn 1 is a long user message (MATH-500 problems, about `--history` tokens in all) and the model's reply;
turn 2 resends that history plus a new question. With the cache, turn 2 starts from turn 1's cached prompt
blocks; without it, from scratch. Prints time to first token both ways and their ratio, checks that the greedy
replies are token for token the same, and that the pool stays within a small cap (second run).

    python benchmarks/prefix_cache.py [--model qwen2.5-coder:0.5b] [--quant int4] [--history 2000]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import qwq
from qwq.engine.engine import Engine
from qwq.engine.prefix_cache import PrefixCache

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def history_text(tokens: int, model: qwq.Model) -> str:
    """MATH-500 problems joined until about `tokens` tokens."""
    problems = []
    with open(next(DATA.glob("**/math500*.jsonl"))) as lines:
        for line in lines:
            problems.append(json.loads(line)["problem"])
            if len(model.tokenizer.encode("\n\n".join(problems))) >= tokens:
                break
    return "Here are some problems:\n\n" + "\n\n".join(problems)


def turn(engine: Engine, model: qwq.Model, messages: list[dict], max_tokens: int) -> tuple[list[int], float, int]:
    """(reply ids, seconds to the first token, prompt tokens served from the cache)."""
    ids = model.tokenizer.encode(model.tokenizer.apply_chat_template(messages, add_generation_prompt=True))
    request = model.request(ids, model.params(max_tokens=max_tokens, temperature=0))
    started = time.perf_counter()
    first, reply, cached = None, [], 0
    for output in engine.stream(request):
        if first is None and output.new_ids:
            first = time.perf_counter() - started
        reply[output.start :] = output.new_ids
        cached = max(cached, output.cached_tokens)
    return reply, first or 0.0, cached


def conversation(model: qwq.Model, cache: PrefixCache | None, history: str, new_tokens: int) -> tuple:
    engine = Engine(model.network, model.tokenizer, model.context_length, prefix_cache=cache)
    messages = [{"role": "user", "content": history + "\n\nWhich of these is the easiest? One sentence."}]
    first_reply, _, _ = turn(engine, model, messages, new_tokens)
    messages += [
        {"role": "assistant", "content": model.tokenizer.decode(first_reply, skip_special_tokens=True)},
        {"role": "user", "content": "Solve the first problem."},
    ]
    return turn(engine, model, messages, new_tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder:0.5b")
    parser.add_argument("--quant", default="int4", choices=["int8", "int4"])
    parser.add_argument("--history", type=int, default=2000, help="tokens of history before turn 2")
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args()
    model = qwq.load(args.model, quant=args.quant, context_length=4096)
    history = history_text(args.history, model)
    cold_reply, cold_s, _ = conversation(model, None, history, args.new_tokens)
    warm_reply, warm_s, cached = conversation(model, PrefixCache(), history, args.new_tokens)
    block_bytes = PrefixCache.block_bytes(model.network.new_cache(1, 64))
    capped = PrefixCache(capacity_bytes=8 * block_bytes)
    capped_reply, capped_s, capped_hit = conversation(model, capped, history, args.new_tokens)
    stats = capped.stats()
    print(f"model {args.model} quant {args.quant} threads {torch.get_num_threads()} history ~{args.history} tokens")
    print(f"turn 2 time to first token: cache off {cold_s:.2f} s, on {warm_s:.2f} s ({cached} prompt tokens cached)")
    print(f"ratio {cold_s / warm_s:.2f}x; replies identical: {warm_reply == cold_reply}")
    print(
        f"8-block cap ({8 * block_bytes / 2**20:.1f} MiB): {stats.blocks} blocks held, {capped_hit} tokens hit, "
        f"TTFT {capped_s:.2f} s, reply identical: {capped_reply == cold_reply}"
    )


if __name__ == "__main__":
    main()
