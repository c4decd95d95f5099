"""Layers that keep a GGUF tensor at the file's own bits (Q4_K, Q6_K, Q5_0, Q8_0, ...) and run on qwq's kernels
for llama.cpp's block formats (gguf_kernels.cpp).

A quantized GGUF is a model someone chose at those bits; re-quantizing its dequantized weights (qwq's int4/int8)
rounds them a second time. These layers hold the blocks as stored, repacked losslessly at load into planes the
kernels read in order: decode-sized inputs multiply them directly (int8 activations in blocks of 32), prompts
dequantize a slice of rows at a time (exactly gguf's values) into a dense GEMM, as Int4Linear does. The
embedding table stays at its bits too, read a row per token.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from torch import nn

from qwq.errors import InvalidRequestError, ModelLoadError
from qwq.quant import native
from qwq.quant.linear import _QuantizedLinear


@dataclass(frozen=True)
class Layout:
    """The kernels' planes for a type: per super-block of `weights` weights, `plane_bytes` bytes in each plane
    (gguf_kernels.cpp's table, which checks every plane it is given against its own)."""

    weights: int
    plane_bytes: tuple[int, ...]


LAYOUTS = {
    GGMLQuantizationType.Q4_0: Layout(128, (64, 8)),
    GGMLQuantizationType.Q4_1: Layout(128, (64, 8, 8)),
    GGMLQuantizationType.Q5_0: Layout(128, (64, 16, 8)),
    GGMLQuantizationType.Q5_1: Layout(128, (64, 16, 8, 8)),
    GGMLQuantizationType.Q8_0: Layout(128, (128, 8)),
    GGMLQuantizationType.Q2_K: Layout(256, (64, 20)),
    GGMLQuantizationType.Q3_K: Layout(256, (64, 32, 18)),
    GGMLQuantizationType.Q4_K: Layout(256, (128, 20)),
    GGMLQuantizationType.Q5_K: Layout(256, (128, 32, 20)),
    GGMLQuantizationType.Q6_K: Layout(256, (128, 64, 18)),
}
KERNEL_TYPES = frozenset(LAYOUTS)
FILE_BITS = "gguf"  # the load mode (`quant="gguf"`) that keeps a GGUF's quantized tensors as stored


def plane_widths(qtype: GGMLQuantizationType, in_features: int) -> tuple[int, ...]:
    """Bytes per row of each plane: rows of the 32-weight types are padded with zero weights to a multiple of 128."""
    layout = LAYOUTS[qtype]
    supers = math.ceil(in_features / layout.weights)
    return tuple(supers * size for size in layout.plane_bytes)


def storable(qtype: GGMLQuantizationType, in_features: int) -> bool:
    """Whether a [N, in_features] tensor of this type can stay at its bits on qwq's kernels."""
    return qtype in KERNEL_TYPES and in_features % GGML_QUANT_SIZES[qtype][0] == 0


def _kernels():
    kernels = native.kernels()
    if kernels is None:
        raise ModelLoadError(
            "qwq's CPU kernels could not be built (no C++ compiler?): a quantized GGUF cannot run at its own bits; "
            "load it with --dtype float32 (dequantized) or --quant int8"
        )
    return kernels


class _GGUFPlanes:
    """The planes of one GGUF tensor, as buffers `plane0`, `plane1`, ... of the module mixing this in."""

    qtype: GGMLQuantizationType
    in_features: int

    def _register_planes(self, rows: int) -> None:
        for index, width in enumerate(plane_widths(self.qtype, self.in_features)):
            self.register_buffer(f"plane{index}", torch.empty(rows, width, dtype=torch.uint8))

    @property
    def planes(self) -> list[torch.Tensor]:
        return [getattr(self, f"plane{index}") for index in range(len(LAYOUTS[self.qtype].plane_bytes))]

    @torch.no_grad()
    def set_weight(self, blocks: Iterable[tuple[int, torch.Tensor]]) -> None:
        """The tensor's blocks as the file stores them, (first row, raw [rows, bytes per row] uint8) in order (a
        `RawBlocks`), packed a block of rows at a time into new planes: no float copy of the weight exists."""
        kernels = _kernels()
        rows = self.planes[0].shape[0]
        planes = [torch.empty(rows, width, dtype=torch.uint8) for width in plane_widths(self.qtype, self.in_features)]
        done = 0
        for first, raw in blocks:
            if first != done:
                raise ModelLoadError(f"GGUF blocks came out of order: row {first} after {done}")
            kernels.gguf_pack(raw.contiguous(), int(self.qtype), self.in_features, planes, first)
            done = first + raw.shape[0]
        if done != rows:
            raise ModelLoadError(f"GGUF tensor has {done} rows, the layer {rows}")
        for index, plane in enumerate(planes):
            setattr(self, f"plane{index}", plane)


class GGUFLinear(_GGUFPlanes, _QuantizedLinear):
    """A Linear layer whose weight is one GGUF tensor's blocks (or several of one type, fused row-wise)."""

    def __init__(self, in_features: int, out_features: int, bias: bool, qtype: GGMLQuantizationType) -> None:
        if not storable(qtype, in_features):
            raise InvalidRequestError(f"a {qtype.name} weight of input size {in_features} has no qwq kernel")
        super().__init__(in_features, out_features, bias)
        self.native = True  # the kernels are what holds this layout (see _kernels for when they cannot be built)
        self.qtype = qtype
        self._register_planes(out_features)

    def dequantized(self, start: int = 0, end: int | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Rows [start, end) of the weight as `dtype`: exactly the file's dequantized values (then rounded)."""
        end = self.out_features if end is None else end
        as_bf16 = dtype == torch.bfloat16
        return _kernels().gguf_dequantize(int(self.qtype), self.in_features, self.planes, start, end, as_bf16).to(dtype)

    def _native_matmul(self, kernels, flat: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return kernels.gguf_matmul(flat, [int(self.qtype)], self.in_features, [self.planes], bias)

    def native_matrix(self, kernels):
        """This layer as the C++ step kernels take it."""
        return stacked_matrix([self], kernels)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, type={self.qtype.name}"


class GGUFEmbedding(_GGUFPlanes, nn.Module):
    """The embedding table at the file's bits: a lookup dequantizes the rows it reads (gguf's values exactly)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, qtype: GGMLQuantizationType) -> None:
        if not storable(qtype, embedding_dim):
            raise InvalidRequestError(f"a {qtype.name} table of width {embedding_dim} has no qwq kernel")
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.qtype = num_embeddings, embedding_dim, qtype
        self.in_features, self.out_features = embedding_dim, num_embeddings  # as the LM head that may share it
        self._register_planes(num_embeddings)

    @property
    def weight(self) -> torch.Tensor:
        """The first plane: where the table lives (its device), not its values."""
        return self.plane0

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = _kernels().gguf_rows(int(self.qtype), self.embedding_dim, self.planes, ids.reshape(-1))
        return rows.view(*ids.shape, self.embedding_dim)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, type={self.qtype.name}"


def share_table(head: GGUFLinear, table: GGUFEmbedding) -> None:
    """A tied LM head reads the embedding table's own planes (one copy of the blocks)."""
    for index, plane in enumerate(table.planes):
        setattr(head, f"plane{index}", plane)


def fusable(parts: Sequence[nn.Module]) -> bool:
    """GGUF layers that one set of planes can hold: the same type, input size and bias presence."""
    first = parts[0]
    return all(
        isinstance(part, GGUFLinear)
        and part.qtype == first.qtype
        and part.in_features == first.in_features
        and (part.bias is None) == (first.bias is None)
        for part in parts
    )


def concatenate(parts: Sequence[GGUFLinear]) -> GGUFLinear:
    """One layer whose output is the parts' outputs side by side: their planes' rows one after the other (rows are
    independent in every block format, so these are the same numbers)."""
    first = parts[0]
    with torch.device("meta"):  # every buffer is replaced below
        fused = GGUFLinear(first.in_features, sum(p.out_features for p in parts), first.bias is not None, first.qtype)
    for index in range(len(first.planes)):
        setattr(fused, f"plane{index}", torch.cat([part.planes[index] for part in parts]))
    if first.bias is not None:
        fused.bias = nn.Parameter(torch.cat([part.bias for part in parts]), requires_grad=False)
    return fused


def stacked_matrix(parts: Sequence[GGUFLinear], kernels):
    """GGUF layers reading one input, as one C++ matrix whose output is theirs side by side (the parts may be of
    different types: each keeps its own planes), or None where only some of them have a bias."""
    biases = [part.bias for part in parts]
    if any(b is None for b in biases) and not all(b is None for b in biases):
        return None
    bias = None if biases[0] is None else torch.cat([b.float() for b in biases])
    return kernels.QuantizedMatrix([int(p.qtype) for p in parts], parts[0].in_features, [p.planes for p in parts], bias)


def keep_file_bits(network: nn.Module, types: Mapping[str, GGMLQuantizationType]) -> nn.Module:
    """Swap, on the meta-device model, every Linear and the embedding table whose GGUF tensor (by HF name, in
    `types`) has a kernel type for the layer that keeps those bits; the rest (F32/F16 tensors, shapes no kernel
    holds) stay float. A tied LM head takes the table's type: the loader then gives it the table's planes."""
    tied = network.config.tie_word_embeddings
    for parent_name, parent in list(network.named_modules()):
        for name, child in list(parent.named_children()):
            full = f"{parent_name}.{name}" if parent_name else name
            qtype = types.get("model.embed_tokens.weight" if tied and full == "lm_head" else f"{full}.weight")
            if isinstance(child, nn.Linear) and qtype is not None and storable(qtype, child.in_features):
                layer = GGUFLinear(child.in_features, child.out_features, child.bias is not None, qtype)
                setattr(parent, name, layer.to(child.weight.device))
            elif isinstance(child, nn.Embedding) and qtype is not None and storable(qtype, child.embedding_dim):
                table = GGUFEmbedding(child.num_embeddings, child.embedding_dim, qtype)
                setattr(parent, name, table.to(child.weight.device))
    if tied and isinstance(network.lm_head, GGUFLinear):
        share_table(network.lm_head, network.model.embed_tokens)  # planned (and later loaded) once
    return network


def file_bits_description(network: nn.Module) -> str | None:
    """ "gguf Q4_K/Q6_K": the types the model runs at its file's bits, or None where it runs none."""
    types = sorted({m.qtype.name for m in network.modules() if isinstance(m, GGUFLinear | GGUFEmbedding)})
    return "gguf " + "/".join(types) if types else None
