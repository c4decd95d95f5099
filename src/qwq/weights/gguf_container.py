"""A lean reader for the GGUF container: header, metadata and tensor directory, no tensor data.

`gguf.GGUFReader` turns every element of every metadata array into its own numpy object; for a Qwen
vocabulary (152k tokens and 151k merges) that costs about 7 s and 0.5 GB that fragmentation keeps. We
parse the same layout (GGUF v2/v3, little-endian; see ggml's docs/gguf.md) with `struct` in well under
a second, and leave dequantization to the `gguf` package.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from qwq.errors import ModelLoadError

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
# Metadata value types: code -> struct format (strings and arrays are handled apart).
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # PyTorch order (slowest dimension first); GGUF stores it reversed
    qtype: GGMLQuantizationType
    offset: int  # absolute position of the first byte in the file
    n_bytes: int


class _Cursor:
    """Sequential little-endian reads over the mapped file, failing with a clear message at its end."""

    def __init__(self, buffer: mmap.mmap, path: Path) -> None:
        self.buffer = buffer
        self.path = path
        self.position = 0

    def unpack(self, fmt: str) -> Any:
        size = struct.calcsize("<" + fmt)
        if self.position + size > len(self.buffer):
            raise ModelLoadError(f"{self.path}: truncated: the header ends at byte {len(self.buffer)}")
        (value,) = struct.unpack_from("<" + fmt, self.buffer, self.position)
        self.position += size
        return value

    def string(self) -> str:
        length = self.unpack("Q")
        end = self.position + length
        if end > len(self.buffer):
            raise ModelLoadError(f"{self.path}: truncated: a header string runs past byte {len(self.buffer)}")
        raw = self.buffer[self.position : end]
        self.position = end
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ModelLoadError(f"{self.path}: corrupt: a header string is not UTF-8") from None

    def value(self, kind: int) -> Any:
        if kind in _SCALARS:
            return self.unpack(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item_kind, count = self.unpack("I"), self.unpack("Q")
            if count > len(self.buffer):
                raise ModelLoadError(f"{self.path}: corrupt: an array claims {count} items")
            if item_kind in _SCALARS:
                fmt = f"<{count}{_SCALARS[item_kind]}"
                size = struct.calcsize(fmt)
                if self.position + size > len(self.buffer):
                    raise ModelLoadError(f"{self.path}: truncated: an array runs past byte {len(self.buffer)}")
                items = list(struct.unpack_from(fmt, self.buffer, self.position))
                self.position += size
                return items
            return [self.value(item_kind) for _ in range(count)]
        raise ModelLoadError(f"{self.path}: corrupt: unknown metadata value type {kind}")


def read_header(path: Path) -> tuple[dict[str, Any], list[TensorInfo]]:
    """The metadata and tensor directory of a GGUF file, every tensor checked to lie inside the file."""
    with path.open("rb") as handle:
        if handle.read(4) != MAGIC:
            handle.seek(0)
            raise ModelLoadError(f"{path}: not a GGUF file (starts with {handle.read(4)!r}, expected {MAGIC!r})")
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buffer:
            cursor = _Cursor(buffer, path)
            cursor.position = 4
            version = cursor.unpack("I")
            if version not in (2, 3):
                raise ModelLoadError(f"{path}: GGUF version {version} is not supported (need 2 or 3, little-endian)")
            tensor_count, kv_count = cursor.unpack("Q"), cursor.unpack("Q")
            if tensor_count > len(buffer) or kv_count > len(buffer):
                raise ModelLoadError(f"{path}: corrupt: header claims {tensor_count} tensors, {kv_count} keys")
            metadata: dict[str, Any] = {}
            for _ in range(kv_count):
                key = cursor.string()
                metadata[key] = cursor.value(cursor.unpack("I"))
            directory = [_tensor_entry(cursor) for _ in range(tensor_count)]
            alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
            if not isinstance(alignment, int) or alignment <= 0:
                raise ModelLoadError(f"{path}: corrupt: general.alignment is {alignment!r}")
            data_start = -(-cursor.position // alignment) * alignment
            file_size = len(buffer)
    tensors = []
    for name, dims, type_code, relative in directory:
        try:
            qtype = GGMLQuantizationType(type_code)
        except ValueError:
            raise ModelLoadError(f"{path}: corrupt: tensor {name!r} has unknown type code {type_code}") from None
        block, block_bytes = GGML_QUANT_SIZES[qtype]
        elements = 1
        for dim in dims:
            elements *= dim
        if not dims or min(dims) == 0 or dims[0] % block:
            raise ModelLoadError(f"{path}: corrupt: tensor {name!r} has shape {dims} for type {qtype.name}")
        info = TensorInfo(name, tuple(reversed(dims)), qtype, data_start + relative, elements // block * block_bytes)
        if info.offset + info.n_bytes > file_size:
            raise ModelLoadError(
                f"{path}: truncated: tensor {name!r} needs bytes up to {info.offset + info.n_bytes}, "
                f"the file has {file_size}"
            )
        tensors.append(info)
    _check_disjoint(path, tensors)
    return metadata, tensors


def _check_disjoint(path: Path, tensors: list[TensorInfo]) -> None:
    """Refuse tensors whose bytes overlap (a retyped or hand-edited directory): each would read the other's."""
    ordered = sorted(tensors, key=lambda t: t.offset)
    for first, second in zip(ordered, ordered[1:], strict=False):
        if first.offset + first.n_bytes > second.offset:
            raise ModelLoadError(
                f"{path}: corrupt: tensor {first.name!r} (bytes {first.offset}..{first.offset + first.n_bytes}) "
                f"overlaps tensor {second.name!r} (from byte {second.offset})"
            )


def _tensor_entry(cursor: _Cursor) -> tuple[str, list[int], int, int]:
    name = cursor.string()
    n_dims = cursor.unpack("I")
    if n_dims > 8:
        raise ModelLoadError(f"{cursor.path}: corrupt: tensor {name!r} claims {n_dims} dimensions")
    dims = [cursor.unpack("Q") for _ in range(n_dims)]
    return name, dims, cursor.unpack("I"), cursor.unpack("Q")
