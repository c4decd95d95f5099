"""Decode-sized matmuls on a model's decode-step shapes (Q/K/V and gate/up fused, as the step kernels run them,
and the LM head): qwq's kernels, built for this machine and for plain AVX2, and PyTorch's packed int8/int4
kernels, on 1, 2, 4 and 8 activation rows (one per sequence of a batched decode step).

Each measurement cycles through enough copies of the weight (256 MB in all) that none stays in the cache, as in
a real decode step, and reports the median call: GB of weights read per second (the weight is read once per
call, whatever the rows), the call's time, and its time over one row's. The threads split the weight's rows,
so every row count should keep both busy: "threads ×" is the native kernel's 1-thread time over its time on
--threads. With --before-src, the kernels of another checkout (its qwq/quant/native.py builds its sources) run
in the same process, for an after / before ratio.

--compute measures the kernels' arithmetic instead, which other processes on the same cores disturb less: one
thread, a weight of about 1 MB (the shape's rows cut) that stays in the L2 cache, the best of many calls taken
in turns; ns per activation row, weight row and 128 weights.

    python benchmarks/kernels.py [--model 0.5b|1.5b] [--threads 2] [--group-size 32] [--rows 1 2 4 8]
                                 [--before-src /tmp/qwq-before/src] [--compute]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from types import ModuleType

import torch

from qwq.quant import native

# (in, out) of each decode-step matrix: fused Q/K/V, O, fused gate/up, down, LM head
SHAPES = {
    "0.5b": [(896, 1152), (896, 896), (896, 9728), (4864, 896), (896, 151936)],
    "1.5b": [(1536, 2048), (1536, 1536), (1536, 17920), (8960, 1536), (1536, 151936)],
}
CACHE_BYTES = 256e6
HOT_BYTES = 2**20  # a weight the L2 cache holds
HOT_TRIALS = 40


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


def _build_of(src: Path) -> ModuleType:
    """The native kernels of the checkout whose sources are in `src`, built by its own native.py (under the usual
    name, so that a build of that checkout already made is found)."""
    spec = importlib.util.spec_from_file_location("before_native", src / "qwq" / "quant" / "native.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build(("-march=native",))


def _products(kind: str, k: int, n: int, group: int, copies: int) -> dict[str, Callable]:
    """name -> product(kernels or None, x) cycling over `copies` copies of one random weight."""
    if kind == "int8":
        q, scale = torch.randint(-127, 128, (n, k), dtype=torch.int8), torch.rand(n)
        packed = [native.pack_int8(q) for _ in range(copies)]
        stock, stock_scale = [q.clone() for _ in range(copies)], scale.to(torch.bfloat16)

        def ours(kernels: ModuleType, x: torch.Tensor) -> list[Callable]:
            return [partial(kernels.int8_matmul, x, d, scale) for d in packed]

        def theirs(x: torch.Tensor) -> list[Callable]:
            mm = torch.ops.aten._weight_int8pack_mm
            return [partial(mm, x.to(torch.bfloat16), w, stock_scale) for w in stock]

    else:
        q = torch.randint(0, 16, (n, k), dtype=torch.uint8)
        scale, low = torch.rand(n, k // group).half(), torch.rand(n, k // group).half()
        packed = [native.pack_int4(q) for _ in range(copies)]
        stock = [torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32), 1) for _ in range(copies)]
        zeros = torch.rand(k // group, n, 2, dtype=torch.bfloat16)

        def ours(kernels: ModuleType, x: torch.Tensor) -> list[Callable]:
            return [partial(kernels.int4_matmul, x, d, scale, low, group) for d in packed]

        def theirs(x: torch.Tensor) -> list[Callable]:
            mm = torch.ops.aten._weight_int4pack_mm_for_cpu
            return [partial(mm, x.to(torch.bfloat16), w, group, zeros) for w in stock]

    return {"ours": ours, "theirs": theirs}


def _best_seconds(calls: dict[str, Callable[[], object]], trials: int = HOT_TRIALS) -> dict[str, float]:
    """The fastest of `trials` runs of each call, the calls taken in turns."""
    best = dict.fromkeys(calls, float("inf"))
    for _ in range(trials):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def compute_table(builds: dict[str, ModuleType], args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    print(
        f"{args.model} shapes, 1 thread, int4 groups of {args.group_size}, weights in the L2 cache, best of "
        f"{HOT_TRIALS} calls; ns per activation row, weight row and 128 weights\n"
    )
    columns = ["in × rows of out", "quant", "rows", *(f"{name} ns" for name in builds)]
    columns += ["after ÷ before"] if "before" in builds else []
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for k, _ in SHAPES[args.model]:
        n = max(16, HOT_BYTES // k // 16 * 16)
        for kind in args.quants:
            products = _products(kind, k, n, args.group_size, copies=1)
            for rows in sorted({1, *args.rows}):
                x = torch.randn(rows, k)
                best = _best_seconds({name: products["ours"](kernels, x)[0] for name, kernels in builds.items()})
                units = rows * n * k / 128
                row = [f"{k} × {n}", kind, str(rows), *(f"{best[name] / units * 1e9:.2f}" for name in builds)]
                if "before" in builds:
                    row.append(f"{best['before'] / best['native']:.2f}")
                print("| " + " | ".join(row) + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(SHAPES), default="1.5b", help="whose matrix shapes")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--group-size", type=int, default=32)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--quants", nargs="+", choices=["int8", "int4"], default=["int8", "int4"])
    parser.add_argument("--before-src", type=Path, help="another checkout's src/ to compare against")
    parser.add_argument("--compute", action="store_true", help="the arithmetic alone (see above)")
    args = parser.parse_args()
    builds = {"native": native.build(("-march=native",))}
    builds["AVX2"] = native.build(("-march=x86-64-v3",), "qwq_kernels_avx2")  # the tests' build of it
    if args.before_src:
        builds["before"] = _build_of(args.before_src)
    if args.compute:
        compute_table(builds, args)
        return
    group = args.group_size
    print(
        f"{args.model} shapes, {args.threads} threads, int4 groups of {group}; GB/s of weights read "
        "(median call, cache-cold)\n"
    )
    columns = ["in × out", "quant", "rows", "native GB/s", "native ms", "time ÷ 1 row's", "threads ×"]
    columns += [f"{name} GB/s" for name in builds if name != "native"] + ["torch GB/s"]
    columns += ["after ÷ before"] if args.before_src else []
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for k, n in SHAPES[args.model]:
        copies = max(2, int(CACHE_BYTES / (n * k)))
        for kind in args.quants:
            weight_bytes = n * k + 4 * n if kind == "int8" else n * k // 2 + 4 * n * k // group
            products = _products(kind, k, n, group, copies)
            one_row = None
            for rows in sorted({1, *args.rows}):
                x = torch.randn(rows, k)
                torch.set_num_threads(args.threads)
                seconds = {name: _median_seconds(products["ours"](kernels, x)) for name, kernels in builds.items()}
                seconds["torch"] = _median_seconds(products["theirs"](x))
                torch.set_num_threads(1)
                one_thread = _median_seconds(products["ours"](builds["native"], x))
                one_row = one_row or seconds["native"]  # rows == 1 comes first
                row = [f"{k} × {n}", kind, str(rows), f"{weight_bytes / seconds['native'] / 1e9:.1f}"]
                row += [f"{seconds['native'] * 1e3:.3f}", f"{seconds['native'] / one_row:.2f}"]
                row += [f"{one_thread / seconds['native']:.2f}"]
                row += [f"{weight_bytes / seconds[name] / 1e9:.1f}" for name in builds if name != "native"]
                row += [f"{weight_bytes / seconds['torch'] / 1e9:.1f}"]
                if args.before_src:
                    row.append(f"{seconds['before'] / seconds['native']:.2f}")
                print("| " + " | ".join(row) + " |", flush=True)
            del products


if __name__ == "__main__":
    main()
