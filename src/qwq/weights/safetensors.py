"""Reading HF safetensors checkpoints, single-file or sharded, memory-mapped tensor by tensor."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from qwq.errors import ModelLoadError

INDEX_FILE = "model.safetensors.index.json"


def checkpoint_files(directory: Path) -> list[Path]:
    """The safetensors files of a checkpoint directory, from its index when it is sharded."""
    index = directory / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise ModelLoadError(f"{index}: not a valid safetensors index ({exc})") from None
        files = [directory / name for name in sorted(set(weight_map.values()))]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise ModelLoadError(f"{index}: shard files not found: {missing}")
        return files
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{directory}: no *.safetensors weights found")
    return files


def read_tensors(directory: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs from every shard; tensors are read lazily from the memory-mapped files."""
    for path in checkpoint_files(directory):
        try:
            with safe_open(str(path), framework="pt") as handle:
                for name in handle.keys():  # noqa: SIM118 (a safe_open handle, not a dict)
                    yield name, handle.get_tensor(name)
        except (SafetensorError, OSError) as exc:
            raise ModelLoadError(f"{path}: not a readable safetensors file ({exc})") from None
