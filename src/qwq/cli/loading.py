"""The load-time flags every model-loading command shares (--dtype, --device, --quant, --kv-cache, --threads,
--ctx), and loading with them: checked before any file is read, with a progress bar on a terminal."""

from __future__ import annotations

import argparse

import torch

from qwq.api import KV_CACHE_DTYPES, Model, load
from qwq.errors import InvalidRequestError

DEFAULT_CONTEXT = 8192  # the CLI's context when --ctx is not given (capped by the model's own)


def add_load_options(command: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """Load-time choices, shared by every command that loads a model."""
    command.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    command.add_argument("--device")
    command.add_argument("--quant", choices=["int8", "int4"], help="weight-only quantization (CPU)")
    command.add_argument("--quant-group-size", type=int, default=32, help="int4 group size (32, 64, 128, 256)")
    kv_help = "KV cache dtype (default: bf16 with --quant, else the activations')"
    command.add_argument("--kv-cache", choices=sorted(KV_CACHE_DTYPES), help=kv_help)
    command.add_argument("--threads", type=int, help="CPU threads (default: all cores torch sees)")
    command.add_argument(
        "--ctx", type=int, help=f"context length (default: the model's; run, serve, bench cap it at {DEFAULT_CONTEXT})"
    )


def check_load_options(args: argparse.Namespace) -> None:
    """The flags' values, refused by name before anything is loaded; --threads applied."""
    if args.threads is not None:
        if args.threads < 1:
            raise InvalidRequestError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.ctx is not None and args.ctx < 1:
        raise InvalidRequestError(f"--ctx must be a positive number of tokens, got {args.ctx}")


def load_model(args: argparse.Namespace, bar: bool = True, default_context: int | None = DEFAULT_CONTEXT) -> Model:
    """Load `args.model` with the flags; a progress bar on a terminal (bar=False where another live display
    runs); refused up front (with a hint) when it will not fit. Without --ctx the context is the model's,
    capped at `default_context` (None: the model's whole context)."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn

    check_load_options(args)
    options = {
        "dtype": args.dtype,
        "device": args.device,
        "quant": args.quant,
        "quant_group_size": args.quant_group_size,
        "kv_cache": args.kv_cache,
        "context_length": args.ctx,
        "default_context_length": default_context,  # laptop-sized KV cache unless --ctx says otherwise
    }
    console = Console(stderr=True)
    with Progress(
        TextColumn("loading {task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} tensors"),
        console=console,
        transient=True,
        disable=not (bar and console.is_terminal),
    ) as progress:
        task = progress.add_task(args.model, total=None)
        return load(
            args.model, **options, progress=lambda done, total: progress.update(task, completed=done, total=total)
        )
