"""qwq against llama.cpp and HF transformers on the same GGUF and thread count, measured in one run.

Configurations: qwq (gguf: the file's own bits on qwq's kernels for its block formats; bfloat16, int8, int4 on qwq's
own kernels, int8 / int4 on PyTorch's packed kernels, and float32), llama.cpp (llama-cpp-python, the GGUF as
stored; `--llama-python` runs it with another interpreter), transformers (float32, bfloat16). Each runs in its
own process, one after the other, so its peak RSS is its own; `--rounds N` repeats the whole sequence and
reports each configuration's median (the machine's speed drifts by minutes: rounds spread that over all).

Also measures this machine's read bandwidth (the best of several full reads) just before and just after each
configuration runs, and prints its decode speed as a fraction of its roofline (that bandwidth / bytes of weights
read per token, embedding rows excluded): the bandwidth here swings by up to 1.7x from minute to minute, so a
roofline from another minute would say little. For qwq it prints the peak RSS over the bytes it stores (weights,
embedding table and the KV cache the benchmark allocates), raw and net of the runtime (the RSS of the same
process with torch, qwq, its kernels and the tokenizer loaded, before any weight: 0.3 GiB here).

    pip install llama-cpp-python==0.3.36   # builds llama.cpp from source (about 6 minutes on 2 cores)
    python benchmarks/compare_cpu.py [--model qwen2.5-coder:0.5b] [--prompt-tokens 512] [--new-tokens 128]
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = [
    "llama.cpp-gguf",
    "qwq-gguf",
    "transformers-float32",
    "transformers-bfloat16",
    "qwq-float32",
    "qwq-bfloat16",
    "qwq-int8",
    "qwq-int4",
    "qwq-int8-torchkernels",
    "qwq-int4-torchkernels",
]


def _median_rates(timings: list[tuple[float, float]], prompt_tokens: int, new_tokens: int) -> dict:
    """timings: (seconds to first token, seconds for the remaining new_tokens) per repetition."""
    return {
        "prefill": statistics.median(prompt_tokens / first for first, _ in timings),
        "decode": statistics.median(new_tokens / rest for _, rest in timings),
    }


def _prompt(args: argparse.Namespace) -> list[int]:
    """The prompt ids every worker uses, written once by the parent (so workers load no extra tokenizer)."""
    return json.loads(Path(args.prompt_file).read_text())


def _run_qwq(args: argparse.Namespace, variant: str) -> dict:
    import os

    variant, _, kernels = variant.partition("-")
    if kernels == "torchkernels":
        os.environ["QWQ_KERNELS"] = "torch"

    import qwq
    from qwq.benchmark import proc_status_gib, run_benchmark
    from qwq.quant import native
    from qwq.quant.gguf_linear import GGUFLinear
    from qwq.quant.linear import Int4Linear, Int8Linear

    quant = variant if variant in ("int8", "int4", "gguf") else None
    qwq.load(args.path, device="meta")  # the tokenizer and config: the runtime without weights
    if quant and kernels != "torchkernels":
        native.kernels()
    runtime = proc_status_gib("VmRSS")
    # the context is what the benchmark needs, so the engine's KV cache (sized to the context) holds just that
    model = qwq.load(
        args.path,
        dtype=None if quant else variant,
        device="cpu",
        quant=quant,
        quant_group_size=args.group_size,
        context_length=args.prompt_tokens + args.new_tokens + 1,
    )
    # one token a step, as llama.cpp decodes, unless --speculative keeps the engine's prompt-lookup drafting
    model.engine(args.prompt_tokens + args.new_tokens + 1).speculative = args.speculative
    result = run_benchmark(model, args.prompt_tokens, args.new_tokens, args.repeats)
    tensors = {id(t): t for t in [*model.network.parameters(), *model.network.buffers()]}
    cache = model.engine().cache  # the engine owns the KV cache the benchmark ran with
    tensors.update({id(t): t for t in [*cache.k, *cache.v]})
    stored = sum(t.numel() * t.element_size() for t in tensors.values())
    read = 0  # bytes of weights each decode step reads: every matrix but the embedding table
    for name, module in model.network.named_modules():
        if isinstance(module, (Int8Linear, Int4Linear, GGUFLinear)):
            read += sum(b.numel() * b.element_size() for b in module.buffers())
        elif name and hasattr(module, "weight") and "embed_tokens" not in name:
            read += module.weight.numel() * module.weight.element_size()
    return {
        "prefill": result.prefill_tokens_per_s.median,
        "decode": result.decode_tokens_per_s.median,
        "bytes_per_token": read,
        "stored": stored,
        "runtime_rss": runtime,
    }


def _run_llama_cpp(args: argparse.Namespace) -> dict:
    """llama.cpp alone (its interpreter may have neither torch nor qwq: the parent counts the bytes it reads)."""
    from llama_cpp import Llama

    ids = _prompt(args)
    llm = Llama(
        args.path,
        n_ctx=args.prompt_tokens + args.new_tokens + 16,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        n_batch=args.prompt_tokens,
        verbose=False,
    )
    timings = []
    for _ in range(args.repeats):
        llm.reset()
        start = time.perf_counter()
        stream = llm.generate(ids, temp=0.0, top_k=1, reset=True)
        next(stream)
        first = time.perf_counter()
        for _ in range(args.new_tokens):
            next(stream)
        timings.append((first - start, time.perf_counter() - first))
    return _median_rates(timings, args.prompt_tokens, args.new_tokens)


def _run_transformers(args: argparse.Namespace, dtype_name: str) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    path = Path(args.path)
    dtype = getattr(torch, dtype_name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype).eval()
    ids = torch.tensor([_prompt(args)])

    def seconds(count: int) -> float:
        start = time.perf_counter()
        model.generate(ids, max_new_tokens=count, min_new_tokens=count, do_sample=False, pad_token_id=0)
        return time.perf_counter() - start

    timings = []
    with torch.inference_mode():
        for _ in range(args.repeats):
            first = seconds(1)
            timings.append((first, seconds(args.new_tokens + 1) - first))
    read = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "embed_tokens" not in n)
    return {**_median_rates(timings, args.prompt_tokens, args.new_tokens), "bytes_per_token": read}


def _peak_rss_gib() -> float:
    """This process image's peak RSS (VmHWM); unlike ru_maxrss it does not inherit the parent's peak."""
    return int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 2**20


def _worker(args: argparse.Namespace) -> None:
    system, _, variant = args.worker.partition("-")
    if system != "llama.cpp":  # llama.cpp gets its threads directly, and should not pay for importing torch
        import torch

        torch.set_num_threads(args.threads)
    if system == "qwq":
        result = _run_qwq(args, variant)
    elif system == "llama.cpp":
        result = _run_llama_cpp(args)
    else:
        result = _run_transformers(args, variant)
    result["rss"] = _peak_rss_gib()
    print(json.dumps(result))


def _run_config(args: argparse.Namespace, config: str, path: str, prompt_file: Path) -> dict | None:
    """One configuration in its own process, with the bandwidth read just before and after it."""
    from qwq.benchmark import read_bandwidth_gbs

    python = args.llama_python if config == "llama.cpp-gguf" and args.llama_python else sys.executable
    command = [python, __file__, "--worker", config, "--path", path, "--prompt-file", str(prompt_file)]
    for flag in ("prompt_tokens", "new_tokens", "threads", "repeats", "group_size"):
        command += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    command += ["--speculative"] if args.speculative else []
    before = read_bandwidth_gbs(args.threads)
    run = subprocess.run(command, capture_output=True, text=True)
    bandwidth = max(before, read_bandwidth_gbs(args.threads))
    if run.returncode != 0:
        print(f"{config} failed: {run.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    result = {**json.loads(run.stdout.strip().splitlines()[-1]), "bandwidth": bandwidth}
    if "bytes_per_token" not in result:  # llama.cpp reads every tensor as stored but the embedding table
        from qwq.weights.gguf_container import read_header

        _, tensors = read_header(Path(path))
        result["bytes_per_token"] = sum(t.n_bytes for t in tensors if t.name != "token_embd.weight")
    print(f"measured {config}: {result}", file=sys.stderr)
    return result


def _median_result(runs: list[dict]) -> dict:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2.5-coder:0.5b")
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1, help="run every configuration this many times, in turn")
    parser.add_argument("--group-size", type=int, default=32, help="qwq int4 group size")
    parser.add_argument("--only", nargs="*", choices=CONFIGS, help="run only these configurations")
    parser.add_argument(
        "--speculative",
        action="store_true",
        help="qwq decodes with its prompt-lookup drafting (default: one token a step)",
    )
    parser.add_argument("--llama-python", help="an interpreter with llama_cpp installed (default: this one)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--prompt-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args)
        return

    from qwq.benchmark import benchmark_prompt
    from qwq.local_models import fetch
    from qwq.tokenizer.tokenizer import Tokenizer
    from qwq.weights.gguf import GGUFFile

    path = str(fetch(args.model))
    prompt_file = Path(tempfile.mkstemp(suffix=".json")[1])
    prompt_file.write_text(json.dumps(benchmark_prompt(Tokenizer.from_gguf(GGUFFile(Path(path))), args.prompt_tokens)))
    runs: dict[str, list[dict]] = {}
    for _ in range(args.rounds):
        for config in args.only or CONFIGS:
            if (result := _run_config(args, config, path, prompt_file)) is not None:
                runs.setdefault(config, []).append(result)
    prompt_file.unlink()
    results = {config: _median_result(config_runs) for config, config_runs in runs.items()}
    bandwidths = [r["bandwidth"] for r in results.values()]

    print(
        f"\n{args.model}: {args.prompt_tokens}-token prompt, {args.new_tokens} greedy new tokens, {args.threads} "
        f"threads, median of {args.repeats} runs in each of {args.rounds} round(s), qwq int4 groups of "
        f"{args.group_size}; {platform.machine()}, read bandwidth {min(bandwidths):.1f}-{max(bandwidths):.1f} GB/s\n"
    )
    anchors = [a for a in ("llama.cpp-gguf", "transformers-float32") if a in results]
    header = (
        "| system | prefill tok/s | decode tok/s | peak RSS GiB | RSS ÷ stored | net RSS ÷ stored | GB read/token "
        "| bandwidth GB/s | decode / roofline |"
    )
    header += "".join(f" prefill × {a} | decode × {a} |" for a in anchors)
    print(header)
    print("|---" * (9 + 2 * len(anchors)) + "|")
    for config, r in results.items():
        roofline = r["bandwidth"] * 1e9 / r["bytes_per_token"]
        stored = f"{r['rss'] * 2**30 / r['stored']:.2f}" if "stored" in r else "–"
        net = f"{(r['rss'] - r['runtime_rss']) * 2**30 / r['stored']:.2f}" if "stored" in r else "–"
        row = (
            f"| {config} | {r['prefill']:.1f} | {r['decode']:.2f} | {r['rss']:.2f} | {stored} | {net} | "
            f"{r['bytes_per_token'] / 1e9:.3f} | {r['bandwidth']:.1f} | "
            f"{r['decode'] / roofline:.0%} of {roofline:.0f} |"
        )
        for anchor in anchors:
            base = results[anchor]
            row += f" {r['prefill'] / base['prefill']:.2f} | {r['decode'] / base['decode']:.2f} |"
        print(row)


if __name__ == "__main__":
    main()
