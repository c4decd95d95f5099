"""Decode-sized matmuls (one activation row) on the 1.5B model's shapes: qwq's kernels, built for this machine
and for plain AVX2, against PyTorch's packed int8/int4 kernels, in GB of weights read per second.

Each measurement cycles through enough copies of the weight (256 MB in all) that none stays in the cache,
as in a real decode step, and reports the median call.

    python benchmarks/kernels.py [--threads 2] [--group-size 32]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch

from qwq.quant import native

SHAPES = [(1536, 8960), (8960, 1536), (1536, 1536), (1536, 256), (1536, 151936)]  # (in, out) of the 1.5B


def _median_seconds(calls: list[Callable[[], object]], rounds: int = 5) -> float:
    for call in calls:
        call()
    times = []
    for _ in range(rounds):
        for call in calls:
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--group-size", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    builds = {"native": native.build(("-march=native",)), "avx2": native.build(("-march=x86-64-v3",), "qwq_avx2")}
    group = args.group_size
    print(f"{args.threads} threads, int4 groups of {group}; GB/s of weights read (median call, cache-cold)\n")
    print("| in × out | int8 native | int8 AVX2 | int8 torch | int4 native | int4 AVX2 | int4 torch |")
    print("|---|---|---|---|---|---|---|")
    for k, n in SHAPES:
        copies = max(2, int(256e6 / (n * k)))
        x = torch.randn(1, k)
        x_bf16 = x.to(torch.bfloat16)
        q8 = torch.randint(-127, 128, (n, k), dtype=torch.int8)
        scale8 = torch.rand(n)
        q4 = torch.randint(0, 16, (n, k), dtype=torch.uint8)
        scale4, low4 = torch.rand(n, k // group).half(), torch.rand(n, k // group).half()
        int8_bytes, int4_bytes = n * k + 4 * n, n * k // 2 + 4 * n * k // group
        row = [f"{k} × {n}"]
        packed8 = [native.pack_int8(q8) for _ in range(copies)]
        for kernels in builds.values():
            seconds = _median_seconds([partial(kernels.int8_matmul, x, d, scale8) for d in packed8])
            row.append(f"{int8_bytes / seconds / 1e9:.1f}")
        del packed8
        stock8 = [q8.clone() for _ in range(copies)]
        scale_bf16 = scale8.to(torch.bfloat16)
        seconds = _median_seconds([partial(torch.ops.aten._weight_int8pack_mm, x_bf16, w, scale_bf16) for w in stock8])
        row.append(f"{int8_bytes / seconds / 1e9:.1f}")
        del stock8
        packed4 = [native.pack_int4(q4) for _ in range(copies)]
        for kernels in builds.values():
            seconds = _median_seconds([partial(kernels.int4_matmul, x, d, scale4, low4, group) for d in packed4])
            row.append(f"{int4_bytes / seconds / 1e9:.1f}")
        del packed4
        stock4 = [torch.ops.aten._convert_weight_to_int4pack_for_cpu(q4.to(torch.int32), 1) for _ in range(copies)]
        zeros = torch.rand(k // group, n, 2, dtype=torch.bfloat16)
        int4pack_mm = torch.ops.aten._weight_int4pack_mm_for_cpu
        seconds = _median_seconds([partial(int4pack_mm, x_bf16, w, group, zeros) for w in stock4])
        row.append(f"{int4_bytes / seconds / 1e9:.1f}")
        print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
