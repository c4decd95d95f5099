"""A GGUF carries no generation config: one that names a known model samples with that model's published
defaults (QwQ-32B-Preview: temperature 0.7, top_p 0.8, top_k 20), by its metadata or its file name."""

from __future__ import annotations

import qwq
from qwq.presets import QWQ_32B_PREVIEW

from tiny_checkpoints import write_gguf


def _defaults(path):
    return qwq.load(path, device="meta").generation_defaults


def test_metadata_name_of_a_known_model_gives_its_defaults(tmp_path):
    path = write_gguf(tmp_path / "model.gguf", model_name="QwQ 32B Preview")
    defaults = _defaults(path)
    published = QWQ_32B_PREVIEW.generation
    assert (defaults.temperature, defaults.top_p, defaults.top_k) == (0.7, 0.8, 20)
    assert (defaults.temperature, defaults.top_p, defaults.top_k) == (
        published.temperature,
        published.top_p,
        published.top_k,
    )
    assert defaults.eos_token_ids  # the file's own end ids, not the preset's


def test_file_name_of_a_known_model_gives_its_defaults(tmp_path):
    defaults = _defaults(write_gguf(tmp_path / "QwQ-32B-Preview-Q4_K_M.gguf"))
    assert (defaults.temperature, defaults.top_p, defaults.top_k) == (0.7, 0.8, 20)


def test_unknown_gguf_keeps_neutral_defaults(tmp_path):
    defaults = _defaults(write_gguf(tmp_path / "something-else.gguf", model_name="Qwen2.5 Coder 0.5B Instruct"))
    assert (defaults.temperature, defaults.top_p, defaults.top_k) == (1.0, 1.0, 0)


def test_defaults_reach_a_request(tmp_path):
    model = qwq.load(write_gguf(tmp_path / "QwQ-32B-Preview-tiny.gguf"))
    request = model.request([1, 2, 3], qwq.GenerationParams(max_tokens=4))
    assert (request.params.temperature, request.params.top_p, request.params.top_k) == (0.7, 0.8, 20)
    explicit = model.request([1, 2, 3], qwq.GenerationParams(max_tokens=4, temperature=0.0))
    assert explicit.params.temperature == 0.0 and explicit.params.top_k == 20
