"""qwq's C++ kernels built for this CPU (AVX-512 VNNI where it has it), for plain AVX2, and as portable C++,
so the tests check every instruction-set path whatever machine runs them."""

from __future__ import annotations

from types import ModuleType

from qwq.quant import native

KERNEL_VARIANTS = {"native": ("-march=native",), "avx2": ("-march=x86-64-v3",), "portable": ("-march=x86-64",)}


def build_kernels(variant: str) -> ModuleType:
    return native.build(KERNEL_VARIANTS[variant], name=f"qwq_kernels_{variant}")
