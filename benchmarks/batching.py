"""Continuous batching throughput: the same requests one at a time and 8 at once through the engine on its
background thread (as `qwq serve` runs it), in one run; prints aggregate decode tokens/s for each and their
ratio, and checks that every greedy answer is the same both ways.

With --profile, the batch runs once more with timers around the engine step, the model's forward, each decoder
layer's step and the LM head, and prints where a decode step of all the rows goes. The layers' last batched
steps are then replayed alternately with their four quantized matmuls alone on as many rows: the matmuls' share
of the layers' time, the rest being attention, norms and the activations between.

    python benchmarks/batching.py [--model qwen2.5-coder:0.5b] [--quant int8|int4] [--clients 8] [--new-tokens 32]
                                  [--profile]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from collections.abc import Callable

import torch
from torch import nn

import qwq
from qwq.engine.background import EngineThread, Handle
from qwq.engine.engine import Engine
from qwq.engine.request import GenerationParams
from qwq.quant import native

QUESTIONS = [
    "What is 7 times 6?",
    "Write a haiku about rust.",
    "Explain TCP in one sentence.",
    "What is a Python list?",
    "List three colors.",
    "What is the capital of France?",
    "Translate 'cat' to French.",
    "What does HTTP stand for?",
]

CONTEXT = 1024


def chat_prompts(model: qwq.Model, clients: int) -> list[list[int]]:
    """`clients` chat prompts (the questions above, repeated as needed), as token ids."""
    template = model.tokenizer.apply_chat_template
    return [
        model.tokenizer.encode(template([{"role": "user", "content": q}], add_generation_prompt=True))
        for q in (QUESTIONS * clients)[:clients]
    ]


def token_ids(handle: Handle) -> list[int]:
    """A submitted request's output ids, read to its end (an error ends the benchmark)."""
    ids: list[int] = []
    for output in handle.outputs():
        if output.error is not None:
            raise RuntimeError(f"request {output.request_id} failed: {output.error}")
        ids[output.start :] = output.new_ids
    return ids


class StepTimes:
    """Wall time spent in each timed part during the engine steps that decode exactly `rows` rows."""

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self.seconds: dict[str, float] = defaultdict(float)
        self.steps = 0
        self._pending: dict[str, float] = {}
        self._decoding = False

    def timed(self, part: str, call: Callable) -> Callable:
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return call(*args, **kwargs)
            finally:
                self._pending[part] = self._pending.get(part, 0.0) + time.perf_counter() - started

        return wrapper

    def time_module(self, part: str, module: nn.Module) -> None:
        starts: list[float] = []

        def before(_module, args) -> None:
            if part == "model forward":  # the step decodes `rows` rows of one token each
                self._decoding = tuple(args[0].shape) == (self.rows, 1)
            starts.append(time.perf_counter())

        def after(_module, _args, _output) -> None:
            self._pending[part] = self._pending.get(part, 0.0) + time.perf_counter() - starts.pop()

        module.register_forward_pre_hook(before)
        module.register_forward_hook(after)

    def step(self, call: Callable) -> Callable:
        """The engine's step, timed; the step's parts count only where it decoded `rows` rows."""
        timed = self.timed("engine step", call)

        def wrapper():
            self._pending, self._decoding = {}, False
            outputs = timed()
            if self._decoding:
                self.steps += 1
                for part, seconds in self._pending.items():
                    self.seconds[part] += seconds
            return outputs

        return wrapper


def matmul_share(steps: list[tuple[Callable, tuple]], network: nn.Module, rounds: int = 7) -> float:
    """The decoder layers' quantized matmuls alone over the layers' whole steps, replayed on each layer's last
    batched inputs (`steps`: the step and its arguments), in alternating rounds (median of each)."""
    kernels = native.kernels()
    matrices = []
    for (_, arguments), layer in zip(steps, network.model.layers, strict=True):
        rows = arguments[0].shape[0]
        attention, mlp = layer.self_attn, layer.mlp
        for linear in (attention.qkv_proj, attention.o_proj, mlp.gate_up_proj, mlp.down_proj):
            matrices.append((linear.native_matrix(kernels), torch.randn(rows, linear.in_features)))
    whole, alone = [], []
    for _ in range(rounds):
        started = time.perf_counter()
        for step, arguments in steps:  # writes the same keys and values into the cache again
            step(*arguments)
        whole.append(time.perf_counter() - started)
        started = time.perf_counter()
        for matrix, x in matrices:
            matrix(x)
        alone.append(time.perf_counter() - started)
    return statistics.median(alone) / statistics.median(whole)


def profile(model: qwq.Model, prompts: list[list[int]], params: GenerationParams) -> None:
    """Run the prompts together once more with timers in, and print where a decode step of all of them goes."""
    network = model.network
    times = StepTimes(len(prompts))
    engine = Engine(network, model.tokenizer, CONTEXT, max_batch=len(prompts))
    engine.step = times.step(engine.step)
    times.time_module("model forward", network)
    times.time_module("LM head", network.lm_head)
    if all(getattr(layer, "native_step", None) is None for layer in network.model.layers):
        raise SystemExit("--profile needs the one-call layer steps (a quantized model on qwq's kernels)")
    last_steps: list[tuple[Callable, tuple]] = []  # each layer's step and its last batched arguments
    for index, layer in enumerate(network.model.layers):
        step = layer.native_step
        last_steps.append((step, ()))

        def recorded(*arguments, index=index, step=step):
            if arguments[0].shape[0] == len(prompts):
                last_steps[index] = (step, arguments)
            return step(*arguments)

        layer.native_step = times.timed("decoder layers", recorded)
    thread = EngineThread(engine)
    try:
        for handle in thread.submit([model.request(p, params) for p in prompts]):
            token_ids(handle)
    finally:
        thread.close()
    per_step = {part: seconds / times.steps * 1e3 for part, seconds in times.seconds.items()}
    total, forward, layers, head = (per_step[k] for k in ("engine step", "model forward", "decoder layers", "LM head"))
    matmuls = layers * matmul_share(last_steps, network)
    parts = [
        ("engine step", total),
        ("  model forward", forward),
        ("    decoder layers", layers),
        ("      quantized matmuls (their share of the layers replayed)", matmuls),
        ("      the rest (attention, norms, activations)", layers - matmuls),
        ("    LM head", head),
        ("    the rest (embedding, rotary, Python)", forward - layers - head),
        ("  engine outside the forward (scheduling, sampling, outputs)", total - forward),
    ]
    print(f"\nprofile: {times.steps} decode steps of {len(prompts)} rows, ms per step")
    for name, ms in parts:
        print(f"{name:<64} {ms:7.2f}  {ms / total:6.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder:0.5b")
    parser.add_argument("--quant", choices=["int8", "int4"])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--profile", action="store_true", help="then time the parts of a batched decode step")
    args = parser.parse_args()
    model = qwq.load(args.model, quant=args.quant, context_length=CONTEXT)
    prompts = chat_prompts(model, args.clients)
    # every request decodes the full budget (EOS ignored), so both runs do the same work
    params = GenerationParams(max_tokens=args.new_tokens, temperature=0, ignore_eos=True)
    engine = EngineThread(Engine(model.network, model.tokenizer, CONTEXT, max_batch=args.clients))
    try:
        token_ids(engine.submit([model.request(prompts[0], params)])[0])  # warm-up
        started = time.perf_counter()
        alone = [token_ids(engine.submit([model.request(p, params)])[0]) for p in prompts]
        alone_s = time.perf_counter() - started
        started = time.perf_counter()
        handles = engine.submit([model.request(p, params) for p in prompts])
        together = [token_ids(h) for h in handles]
        together_s = time.perf_counter() - started
    finally:
        engine.close()
    tokens = sum(map(len, together))
    same = sum(a == b for a, b in zip(alone, together, strict=True))
    print(
        f"model {args.model} quant {args.quant or 'none'} threads {torch.get_num_threads()} "
        f"{args.clients} requests x {args.new_tokens} tokens"
    )
    print(f"one at a time: {tokens / alone_s:6.1f} tok/s ({alone_s:.1f} s)")
    print(f"{args.clients} together:   {tokens / together_s:6.1f} tok/s ({together_s:.1f} s)")
    print(f"ratio {alone_s / together_s:.2f}x; identical greedy outputs {same}/{len(prompts)}")
    if args.profile:
        profile(model, prompts, params)


if __name__ == "__main__":
    main()
