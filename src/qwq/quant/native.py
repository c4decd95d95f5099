"""qwq's own CPU kernels for weight-only int8 / int4 matmuls (`kernels.cpp`), built once per machine.

The C++ source is compiled with torch's cpp_extension on first use, for the machine's own instruction set
(`-march=native`: AVX-512 VNNI where there is one, else AVX2, else portable C++), and cached under
`$QWQ_HOME/build`, keyed by the source, the torch version and the CPU's feature flags. Where no compiler is
found the build fails once, is reported, and the quantized layers use PyTorch's own packed kernels instead.

This module also holds the packed layouts the kernels read (see the top of kernels.cpp) and their inverses.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import time
from functools import lru_cache
from pathlib import Path
from types import ModuleType

import torch

from qwq.paths import qwq_home

logger = logging.getLogger(__name__)

# the quantized matmuls, the rest of a decode step (RMSNorm, one token's attention), and the GGUF block formats
SOURCES = tuple(Path(__file__).with_name(name) for name in ("kernels.cpp", "step_kernels.cpp", "gguf_kernels.cpp"))
ROWS = 4  # rows interleaved in the packed layouts
UNIT = 64  # bytes of one row before the next row's
INT4_CHUNK = 128  # weights per 64 bytes of int4
FLAGS_ENV = "QWQ_KERNEL_FLAGS"  # compiler flags instead of -march=native (tests build the AVX2 and portable paths)

STALE_LOCK_S = 600  # a build takes well under a minute; a lock older than this was left by a killed one


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def build(flags: tuple[str, ...] = ("-march=native",), name: str = "qwq_kernels") -> ModuleType:
    """Compile (or load the cached build of) the kernels with these compiler flags."""
    from torch.utils import cpp_extension

    texts = [source.read_text() for source in SOURCES]
    key = hashlib.sha256("\n".join([*texts, torch.__version__, _cpu_flags(), *flags]).encode()).hexdigest()[:16]
    # the real path: a home whose build folder is a link to another's reuses that build (ninja keys its steps on
    # the sources' paths)
    directory = (qwq_home() / "build").resolve() / f"{name}-{key}"
    directory.mkdir(parents=True, exist_ok=True)
    lock = directory / "lock"  # torch's build lock: one left by a build that was killed would block forever
    if lock.exists() and time.time() - lock.stat().st_mtime > STALE_LOCK_S:
        lock.unlink(missing_ok=True)
    # compile copies kept in the build folder: the build then does not depend on where the checkout lives, so
    # a second checkout of the same sources reuses it instead of rebuilding
    copies = []
    for source, text in zip(SOURCES, texts, strict=True):
        copy = directory / source.name
        if not copy.is_file() or copy.read_text() != text:
            copy.write_text(text)
        copies.append(str(copy))
    return cpp_extension.load(
        name=f"{name}_{key}",
        sources=copies,
        extra_cflags=["-O3", "-fopenmp", *flags],  # OpenMP: ATen's parallel_for is inline OpenMP code
        extra_ldflags=["-fopenmp"],
        build_directory=str(directory),
        verbose=False,
    )


@lru_cache(maxsize=1)
def kernels() -> ModuleType | None:
    """The kernels for this machine, or None where they cannot be built (then torch's kernels serve)."""
    if platform.machine().lower() not in ("x86_64", "amd64", "aarch64", "arm64"):
        return None
    flags = tuple(os.environ[FLAGS_ENV].split()) if os.environ.get(FLAGS_ENV) else ("-march=native",)
    try:
        return build(flags)
    except Exception as error:  # no compiler, no headers: the stock kernels still work
        logger.warning("qwq's CPU kernels could not be built (%s); using PyTorch's int8/int4 kernels", error)
        return None


@lru_cache(maxsize=1)
def fast_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (then prompts run their dense GEMMs in bfloat16)."""
    flags = _cpu_flags().split()
    return any(flag in flags for flag in ("avx512_bf16", "amx_bf16", "bf16"))


def packable(in_features: int, out_features: int) -> bool:
    return out_features % ROWS == 0 and in_features % INT4_CHUNK == 0


def _interleave(rows: torch.Tensor) -> torch.Tensor:
    """(N, B) bytes -> (N/4, 4B): 64-byte units of four rows in turn."""
    n, width = rows.shape
    return rows.reshape(n // ROWS, ROWS, width // UNIT, UNIT).transpose(1, 2).reshape(n // ROWS, ROWS * width)


def _deinterleave(data: torch.Tensor) -> torch.Tensor:
    quads, width = data.shape
    row_width = width // ROWS
    return data.reshape(quads, row_width // UNIT, ROWS, UNIT).transpose(1, 2).reshape(quads * ROWS, row_width)


def pack_int8(q: torch.Tensor) -> torch.Tensor:
    """int8 values in [-127, 127], (N, K) -> the kernel's layout (their bytes, interleaved, as uint8)."""
    return _interleave(q.view(torch.uint8))


def unpack_int8(data: torch.Tensor) -> torch.Tensor:
    return _deinterleave(data).contiguous().view(torch.int8)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """values in [0, 15], (N, K) -> the kernel's layout: per 128 weights, 64 bytes of low | high nibbles."""
    n, k = q.shape
    halves = q.to(torch.uint8).reshape(n, k // INT4_CHUNK, 2, INT4_CHUNK // 2)
    return _interleave((halves[:, :, 0] | (halves[:, :, 1] << 4)).reshape(n, k // 2))


def unpack_int4(data: torch.Tensor) -> torch.Tensor:
    """The kernel's int4 layout -> (N, K) uint8 values in [0, 15]."""
    rows = _deinterleave(data)
    n, half_k = rows.shape
    chunks = rows.reshape(n, half_k // (INT4_CHUNK // 2), INT4_CHUNK // 2)
    return torch.stack([chunks & 0x0F, chunks >> 4], dim=2).reshape(n, half_k * 2)
