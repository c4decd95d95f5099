"""Integrity checks of pulled files against the Hub's metadata: LFS SHA-256 and git blob hashes, checked
against hashlib and `git hash-object` (independent implementations)."""

from __future__ import annotations

import hashlib
import shutil
import subprocess

import pytest

from qwq.errors import DownloadError
from qwq.hub import RemoteFile, file_digest, verify


@pytest.fixture
def files(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "qwen2"}')
    (tmp_path / "model.safetensors").write_bytes(bytes(range(256)) * 1000)
    return tmp_path


def _remote(directory) -> list[RemoteFile]:
    weights = (directory / "model.safetensors").read_bytes()
    config = directory / "config.json"
    git = shutil.which("git")
    blob = (
        subprocess.run([git, "hash-object", str(config)], capture_output=True, text=True, check=True).stdout.strip()
        if git
        else hashlib.sha1(b"blob %d\0" % config.stat().st_size + config.read_bytes()).hexdigest()
    )
    return [
        RemoteFile("config.json", config.stat().st_size, None, blob),
        RemoteFile("model.safetensors", len(weights), hashlib.sha256(weights).hexdigest(), None),
    ]


def test_intact_files_pass(files):
    verify(files, _remote(files))
    assert file_digest(files / "config.json", "sha1", git_blob=True) == _remote(files)[0].git_sha1


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "model.safetensors").unlink(), "missing after download"),
        (lambda d: (d / "model.safetensors").write_bytes(b"short"), "bytes, the Hub says"),
        (lambda d: (d / "model.safetensors").write_bytes(bytes(range(256))[::-1] * 1000), "SHA-256 differs"),
        (lambda d: (d / "config.json").write_text('{"model_type": "llama"}'), "git hash differs"),
    ],
)
def test_damaged_files_are_named(files, damage, message):
    expected = _remote(files)
    damage(files)
    with pytest.raises(DownloadError, match=message):
        verify(files, expected)
