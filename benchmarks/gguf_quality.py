"""How faithfully each runtime runs a quantized GGUF: mean KL divergence and top-1 agreement of its next-token
distributions against the file's own weights in float32 (qwq's float32 path, which equals transformers), over
the same tokens of MATH-500 text, side by side in one run; and where greedy 64-token continuations of MATH-500
problems first leave the float32 path's.

Configurations, each in its own process:
- `qwq-gguf` / `qwq-gguf-decode`: the file's own bits (the default for a quantized GGUF), through the prompt path
  (all positions at once: exact dequantized rows in a dense GEMM, bfloat16 where the CPU has it) and through
  the decode path (one token at a time with the KV cache: the GGUF kernels, int8 activations in blocks of 32);
- `qwq-int8` / `qwq-int4` (and `-decode`): the file re-quantized into qwq's own layouts;
- `llama.cpp`: llama-cpp-python's batch evaluation with `logits_all` (the file's bits, Q8_K/Q8_0 activations),
  run with another interpreter where it is installed (`--llama-python`).

    python benchmarks/gguf_quality.py [--model qwen2.5-coder:0.5b] [--tokens 1024] [--llama-python PATH]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CONFIGS = [
    "qwq-gguf",
    "qwq-gguf-decode",
    "qwq-int8",
    "qwq-int8-decode",
    "qwq-int4",
    "qwq-int4-decode",
    "llama.cpp",
]
CONTINUATION = 64  # greedy tokens a prompt, compared with the float32 path's
MATH500 = Path(__file__).resolve().parents[2] / "shared" / "data" / "math500.jsonl"


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def compare(reference: np.ndarray, logits: np.ndarray) -> dict:
    """Mean KL(reference || candidate) per position and the share of positions whose argmax agrees; numpy only,
    so the llama.cpp worker (another interpreter, no torch) computes it the same way."""
    kl, agree = [], 0
    for start in range(0, len(reference), 128):  # in slices: float64 copies of 128 rows at a time
        ref = reference[start : start + 128].astype(np.float64)
        cand = log_softmax(logits[start : start + 128].astype(np.float64))
        kl.extend((np.exp(ref) * (ref - cand)).sum(axis=-1))
        agree += int((ref.argmax(-1) == cand.argmax(-1)).sum())
    return {"kl": float(np.mean(kl)), "top1": agree / len(reference)}


def _qwq_run(path: str, config: str, ids: list[int], prompts: list[list[int]], threads: int):
    """The configuration's logits over `ids`, and its greedy continuations of `prompts` (plain configurations)."""
    import torch

    import qwq

    torch.set_num_threads(threads)
    mode = config.removeprefix("qwq-").removesuffix("-decode")
    model = qwq.load(path, dtype="float32" if mode == "float32" else None, quant=None if mode == "float32" else mode)
    with torch.inference_mode():
        if not config.endswith("-decode"):
            greedy = [model.generate(p, max_new_tokens=CONTINUATION, temperature=0.0, ignore_eos=True) for p in prompts]
            return model.logits(ids).numpy(), greedy
        network = model.network  # teacher-forced: each position through the cached one-token step
        cache = network.new_cache(1, len(ids))
        rows = []
        for position, token in enumerate(ids):
            logits = network(torch.tensor([[token]]), torch.tensor([[position]]), cache)
            rows.append(logits[0, -1].float())
        return torch.stack(rows).numpy(), None


def _llama_run(path: str, ids: list[int], prompts: list[list[int]], threads: int):
    from llama_cpp import Llama

    llm = Llama(path, n_ctx=len(ids) + 8, n_batch=512, n_threads=threads, logits_all=True, verbose=False)
    llm.eval(ids)
    logits = np.array(llm.scores[: len(ids)], dtype=np.float32)
    greedy = []
    for prompt in prompts:
        tokens = []
        for token in llm.generate(prompt, top_k=1, temp=0.0, reset=True):
            tokens.append(int(token))
            if len(tokens) == CONTINUATION:
                break
        greedy.append(tokens)
    return logits, greedy


def _worker(args: argparse.Namespace) -> None:
    ids, prompts = json.loads(Path(args.ids).read_text())
    start = time.perf_counter()
    if args.worker == "llama.cpp":
        logits, greedy = _llama_run(args.path, ids, prompts, args.threads)
    else:
        logits, greedy = _qwq_run(args.path, args.worker, ids, prompts, args.threads)
    result = {"seconds": time.perf_counter() - start, "greedy": greedy}
    if args.worker == "qwq-float32":
        np.save(args.reference, log_softmax(logits.astype(np.float64)).astype(np.float32))
    else:
        result |= compare(np.load(args.reference), logits)
    print(json.dumps(result))


def divergences(reference: list[list[int]], greedy: list[list[int]]) -> list[int | None]:
    """Per prompt, the first position where a greedy continuation leaves the float32 one (None: equal)."""
    return [
        next((i for i, (a, b) in enumerate(zip(r, g, strict=True)) if a != b), None)
        for r, g in zip(reference, greedy, strict=True)
    ]


def _prompts(path: str, count: int) -> list[list[int]]:
    """MATH-500's first `count` problems, each as `Problem: ...\nSolution:` for a greedy continuation."""
    from qwq.tokenizer.tokenizer import Tokenizer
    from qwq.weights.gguf import GGUFFile

    tokenizer = Tokenizer.from_gguf(GGUFFile(Path(path)))
    lines = MATH500.read_text(encoding="utf-8").splitlines()[:count]
    return [tokenizer.encode(f"Problem: {json.loads(line)['problem']}\nSolution:") for line in lines]


def _text_ids(path: str, count: int) -> list[int]:
    """The first `count` tokens of MATH-500's problems and solutions, one after another."""
    from qwq.tokenizer.tokenizer import Tokenizer
    from qwq.weights.gguf import GGUFFile

    tokenizer = Tokenizer.from_gguf(GGUFFile(Path(path)))
    ids: list[int] = []
    for line in MATH500.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        ids += tokenizer.encode(f"Problem: {record['problem']}\nSolution: {record['solution']}\n\n")
        if len(ids) >= count:
            return ids[:count]
    raise SystemExit(f"MATH-500 holds fewer than {count} tokens")


def _imports_llama_cpp(python: str) -> bool:
    return subprocess.run([python, "-c", "import llama_cpp"], capture_output=True).returncode == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2.5-coder:0.5b")
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=8, help=f"greedy {CONTINUATION}-token continuations of these")
    parser.add_argument("--only", nargs="*", choices=CONFIGS, help="run only these configurations")
    parser.add_argument("--llama-python", default=sys.executable, help="an interpreter with llama_cpp (default: this)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--ids", help=argparse.SUPPRESS)
    parser.add_argument("--reference", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args)
        return

    from qwq.store import resolve

    path = str(resolve(args.model))
    scratch = Path(tempfile.mkdtemp(prefix="gguf-quality-"))
    ids_file, reference = scratch / "ids.json", scratch / "reference.npy"
    ids_file.write_text(json.dumps([_text_ids(path, args.tokens), _prompts(path, args.prompts)]))
    results = {}
    for config in ["qwq-float32", *(args.only or CONFIGS)]:
        python = args.llama_python if config == "llama.cpp" else sys.executable
        if config == "llama.cpp" and not _imports_llama_cpp(python):
            print(
                f"llama.cpp not run: llama_cpp is not importable with {python}; install llama-cpp-python there "
                "(see PERF-NOTES.md) or pass --llama-python",
                file=sys.stderr,
            )
            continue
        command = [python, __file__, "--worker", config, "--path", path, "--ids", str(ids_file)]
        command += ["--reference", str(reference), "--threads", str(args.threads)]
        run = subprocess.run(command, capture_output=True, text=True)
        if run.returncode != 0:
            print(f"{config} failed: {run.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
            continue
        results[config] = json.loads(run.stdout.strip().splitlines()[-1])
        shown = {key: value for key, value in results[config].items() if key != "greedy"}
        print(f"measured {config}: {shown}", file=sys.stderr)
    for file in (ids_file, reference):
        file.unlink(missing_ok=True)
    scratch.rmdir()

    print(f"\n{args.model}: {args.tokens} tokens of MATH-500, against qwq float32 (the file's weights dequantized)\n")
    anchor = results.get("llama.cpp")
    if anchor is None:
        print("(no llama.cpp run here: the ratio columns are empty)\n")
    reference_greedy = results["qwq-float32"]["greedy"]
    print(
        f"| configuration | mean KL | top-1 agreement | KL ÷ llama.cpp's | top-1 − llama.cpp's | greedy {CONTINUATION} "
        "tokens = float32's (first divergence) | seconds |"
    )
    print("|---|---|---|---|---|---|---|")
    for config, r in results.items():
        if "kl" not in r:
            continue
        ratio = f"{r['kl'] / anchor['kl']:.2f}" if anchor else "–"
        delta = f"{r['top1'] - anchor['top1']:+.4f}" if anchor else "–"
        greedy = "–"
        if r["greedy"] is not None:
            points = divergences(reference_greedy, r["greedy"])
            shown = ", ".join("=" if p is None else str(p) for p in points)
            greedy = f"{points.count(None)}/{len(points)} ({shown})"
        print(f"| {config} | {r['kl']:.5f} | {r['top1']:.4f} | {ratio} | {delta} | {greedy} | {r['seconds']:.0f} |")


if __name__ == "__main__":
    main()
