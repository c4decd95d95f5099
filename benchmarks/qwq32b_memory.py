"""QwQ-32B-Preview with random int4 weights on this machine: peak memory and decode speed.

Builds the published architecture (no checkpoint needed), fills it through the same strict loader a
real checkpoint goes through, with random bfloat16 tensors quantized to int4 as they arrive, runs a
prompt and a few greedy decode steps, and reports peak RSS and decode tokens/s against the bandwidth
roofline. The embedding table is bfloat16 (as for every quantized model); activations, norms and biases are
float32, as a quantized GGUF loads, so decode runs each layer as one C++ step.

    python benchmarks/qwq32b_memory.py [--group-size 128] [--prompt-tokens 64] [--new-tokens 16]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator

import torch

import qwq
from qwq.backend import prepare
from qwq.benchmark import proc_status_gib, read_bandwidth_gbs
from qwq.engine.engine import Engine
from qwq.engine.request import GenerationParams, Request
from qwq.weights.loader import expected_shapes, load_weights


def _random_tensors(shapes: dict[str, tuple[int, ...]]) -> Iterator[tuple[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    for name, shape in shapes.items():
        if name.endswith("norm.weight"):
            yield name, torch.ones(shape, dtype=torch.bfloat16)
        else:
            yield name, torch.randn(shape, generator=generator, dtype=torch.bfloat16).mul_(0.02)  # no second copy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    start = time.perf_counter()
    plan = qwq.load("qwq-32b-preview", device="meta", quant="int4", quant_group_size=args.group_size)
    network = plan.network
    shapes = expected_shapes(network)
    load_weights(network, _random_tensors(shapes), "random int4 weights", torch.float32, torch.device("cpu"))
    prepare(network)  # what qwq.load does after loading: fused projections and the one-call C++ decode step
    built = time.perf_counter() - start
    weights = sum(t.numel() * t.element_size() for t in [*network.parameters(), *network.buffers()])
    read_per_token = weights - network.model.embed_tokens.weight.numel() * 2
    after_build = proc_status_gib("VmHWM")

    prompt = torch.randint(0, plan.config.vocab_size, (args.prompt_tokens,)).tolist()
    # a KV cache for this prompt and its new tokens only (the model's whole context would take 17 GB more)
    context = args.prompt_tokens + args.new_tokens + 1
    params = GenerationParams(max_tokens=args.new_tokens + 1, temperature=0.0, ignore_eos=True)
    request = Request(prompt, params.resolved(plan.generation_defaults, len(prompt), context))
    engine = Engine(network, None, context)
    start = time.perf_counter()
    tokens = engine.stream(request)  # one output per step: the prompt's, then a token each
    next(tokens)
    first = time.perf_counter()
    bandwidth = read_bandwidth_gbs(args.threads, gib=0.5)  # just before and after decode (it drifts by minutes)
    decode_start = time.perf_counter()
    count = sum(1 for _ in tokens)
    decode = count / (time.perf_counter() - decode_start)
    bandwidth = max(bandwidth, read_bandwidth_gbs(args.threads, gib=0.5))
    roofline = bandwidth * 1e9 / read_per_token

    print(f"QwQ-32B-Preview, random int4 weights (group {args.group_size}), {args.threads} threads")
    print(f"parameters: {plan.num_parameters():,}; stored weights {weights / 2**30:.2f} GiB (built in {built:.0f} s)")
    print(f"peak RSS after building: {after_build:.2f} GiB; peak RSS overall: {proc_status_gib('VmHWM'):.2f} GiB")
    prefill_s = first - start
    print(f"prefill: {args.prompt_tokens} tokens in {prefill_s:.1f} s ({args.prompt_tokens / prefill_s:.1f} tok/s)")
    print(
        f"decode: {decode:.2f} tok/s; roofline {roofline:.2f} tok/s at {bandwidth:.1f} GB/s and "
        f"{read_per_token / 1e9:.1f} GB read per token -> {decode / roofline:.0%} of roofline"
    )


if __name__ == "__main__":
    main()
