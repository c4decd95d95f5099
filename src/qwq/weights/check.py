"""`qwq check MODEL`: every tensor of a checkpoint read and scanned for NaN and infinite values.

Loading already refuses a corrupt header, overlapping or out-of-file tensor bytes, inconsistent shapes and a
non-finite norm or bias; a NaN inside a large matrix shows only as NaN logits later. This scan reads each
tensor once, block by block of rows (as loading does), so it needs little memory beyond one block.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from qwq.weights import safetensors as safetensors_weights
from qwq.weights.gguf import GGUFFile, RowBlocks, hf_tensor_name


@dataclass
class CheckReport:
    source: str
    tensors: int = 0
    values: int = 0
    bad: list[tuple[str, int]] = field(default_factory=list)  # (tensor, count of NaN/inf values)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.bad


def _blocks(tensor: torch.Tensor | RowBlocks) -> Iterator[torch.Tensor]:
    if isinstance(tensor, RowBlocks):
        yield from tensor
    else:
        yield tensor


def _gguf_tensors(gguf: GGUFFile) -> Iterator[tuple[str, torch.Tensor | RowBlocks]]:
    gguf.model_config()  # the metadata checks loading makes
    matrices = {hf_tensor_name(info.name) for info in gguf.tensor_infos if len(info.shape) == 2}
    return gguf.tensors(row_blocks=matrices - {None})


def check_checkpoint(path: Path, progress: Callable[[int, int], None] | None = None) -> CheckReport:
    """Scan every tensor of the GGUF file or HF directory at `path`; `progress(done, total)` per tensor."""
    started = time.perf_counter()
    report = CheckReport(str(path))
    if path.is_dir():
        total = 0  # unknown until read: safetensors shards are listed lazily
        tensors: Iterator[tuple[str, torch.Tensor | RowBlocks]] = safetensors_weights.read_tensors(path)
    else:
        gguf = GGUFFile(path)
        total = len(gguf.tensor_infos)
        tensors = _gguf_tensors(gguf)
    for name, tensor in tensors:
        bad = 0
        for block in _blocks(tensor):
            report.values += block.numel()
            if block.is_floating_point():
                bad += block.numel() - int(torch.isfinite(block).sum())
        if bad:
            report.bad.append((name, bad))
        report.tensors += 1
        if progress is not None:
            progress(report.tensors, total)
    report.seconds = time.perf_counter() - started
    return report
