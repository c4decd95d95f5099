"""Hub pulls report each file's bytes as huggingface_hub downloads it (through the tqdm class it is handed, as
its http_get calls one: `total`, `initial` for a resumed file, `update(n)`), then the checksum step, with no
bar of huggingface_hub's own. The Hub is replaced here by a function that writes the files and drives the
progress class the way huggingface_hub does; the checksums are the real ones, checked by `hub.verify`."""

from __future__ import annotations

import hashlib

import huggingface_hub
import pytest

from qwq import hub
from qwq.errors import DownloadError
from qwq.pull_progress import VERIFYING, WRITING_MANIFEST

FILES = {"config.json": b'{"model_type": "qwen2"}', "model.safetensors": bytes(range(256)) * 4000}


@pytest.fixture
def fake_hub(monkeypatch):
    def list_files(repo, patterns, revision=None):
        remote = []
        for name, data in FILES.items():
            if name.endswith(".json"):
                blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
                remote.append(hub.RemoteFile(name, len(data), None, blob))
            else:
                remote.append(hub.RemoteFile(name, len(data), hashlib.sha256(data).hexdigest(), None))
        return "c0ffee" * 6 + "c0ff", remote

    def download(repo, filename, *, revision, local_dir, tqdm_class):
        data = FILES[filename]
        resumed = len(data) // 4 if filename.endswith(".safetensors") else 0
        bar = tqdm_class(unit="B", unit_scale=True, total=len(data), initial=resumed, desc=filename)
        for start in range(resumed, len(data), 100_000):
            bar.update(len(data[start : start + 100_000]))
        bar.close()
        (local_dir / filename).write_bytes(data)
        return str(local_dir / filename)

    monkeypatch.setattr(hub, "list_files", list_files)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)


def test_each_file_reports_its_bytes_then_the_checksum(fake_hub, tmp_path, capsys):
    events = []
    hub.download("owner/repo", ("*",), tmp_path, label="hf.co/owner/repo", progress=events.append)
    weights = [e for e in events if e.status == "pulling model.safetensors"]
    size = len(FILES["model.safetensors"])
    assert weights[0].completed == size // 4  # a resumed file starts from what it had
    assert [e.completed for e in weights] == sorted(e.completed for e in weights) and weights[-1].completed == size
    assert {e.total for e in weights} == {size}
    assert weights[0].digest == f"sha256:{hashlib.sha256(FILES['model.safetensors']).hexdigest()}"
    assert [e.status for e in events][-2:] == [VERIFYING, WRITING_MANIFEST]
    assert (tmp_path / hub.VERIFIED_MARKER).is_file()
    assert capsys.readouterr().err == ""  # huggingface_hub drew no bar of its own


def test_a_file_that_does_not_match_fails_at_the_checksum_step(fake_hub, tmp_path, monkeypatch):
    listed = hub.list_files

    def published_elsewise(repo, patterns, revision=None):  # the Hub says another SHA-256 than the bytes have
        commit, files = listed(repo, patterns, revision)
        return commit, [hub.RemoteFile(f.path, f.size, "0" * 64 if f.sha256 else None, f.git_sha1) for f in files]

    monkeypatch.setattr(hub, "list_files", published_elsewise)
    events = []
    with pytest.raises(DownloadError, match="SHA-256 differs"):
        hub.download("owner/repo", ("*",), tmp_path, progress=events.append)
    assert events[-1].status == VERIFYING and not (tmp_path / hub.VERIFIED_MARKER).exists()
