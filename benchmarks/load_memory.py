"""Peak resident memory while loading a checkpoint, against the size of the weights it ends with.

Each variant (float32, bfloat16, int8, int4 with float32 elsewhere) loads in its own process, so each
peak is its own. Prints (peak RSS - RSS before loading) divided by the bytes of the final weights:
near 1.0 means no second copy was ever held.

    python benchmarks/load_memory.py [--model qwen2.5-coder:0.5b]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def _worker(path: str, variant: str) -> None:
    import torch  # noqa: F401  (imported before the baseline so its own memory is not counted)

    import qwq
    from qwq.benchmark import proc_status_gib

    before = proc_status_gib("VmRSS")
    start = time.perf_counter()
    quant = variant if variant.startswith("int") else None
    model = qwq.load(path, dtype=None if quant else variant, device="cpu", quant=quant)
    seconds = time.perf_counter() - start
    tensors = {id(t): t for t in [*model.network.parameters(), *model.network.buffers()]}.values()
    weights = sum(t.numel() * t.element_size() for t in tensors)
    peak = proc_status_gib("VmHWM")
    print(json.dumps({"weights": weights / 2**30, "before": before, "peak": peak, "seconds": seconds}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2.5-coder:0.5b")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args.path, args.worker)
        return

    from qwq.local_models import fetch

    path = str(fetch(args.model))
    print(f"\n{args.model}\n")
    print("| weights | load s | final weights GiB | RSS before GiB | peak RSS GiB | (peak - before) / weights |")
    print("|---|---|---|---|---|---|")
    for variant in ("float32", "bfloat16", "int8", "int4"):
        command = [sys.executable, __file__, "--worker", variant, "--path", path]
        r = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout.splitlines()[-1])
        ratio = (r["peak"] - r["before"]) / r["weights"]
        sizes = f"{r['weights']:.2f} | {r['before']:.2f} | {r['peak']:.2f}"
        print(f"| {variant} | {r['seconds']:.1f} | {sizes} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
