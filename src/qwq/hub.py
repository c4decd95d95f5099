"""Downloads from the Hugging Face Hub, with `huggingface_hub` doing the transfer (progress bars, resume of
partial files) and us doing the integrity check: every file's size, and its SHA-256 (LFS files) or git
blob hash (small files), against the repository's own metadata.

The file list comes from one metadata call made first, so with no network `pull` fails at once with a
message saying how to use a local file instead, rather than after a chain of retries.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from qwq.errors import DownloadError
from qwq.pull_progress import VERIFYING, WRITING_MANIFEST, PullListener, PullProgress, ignore

logger = logging.getLogger(__name__)

VERIFIED_MARKER = ".qwq-verified.json"  # written last: its presence means every file below checked out
_METADATA_TIMEOUT_S = 15


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int
    sha256: str | None  # LFS files
    git_sha1: str | None  # small files: the git blob hash


def file_digest(path: Path, algorithm: str, git_blob: bool = False) -> str:
    """The hex digest of a file; `git_blob` hashes it as git does (a "blob <size>\\0" header first)."""
    digest = hashlib.new(algorithm)
    if git_blob:
        digest.update(f"blob {path.stat().st_size}\0".encode())
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def _offline_error(repo: str, exc: Exception) -> DownloadError:
    return DownloadError(
        f"cannot reach the Hugging Face Hub for {repo} ({type(exc).__name__}: {exc}); "
        "download the checkpoint on a machine with network access and run it by path, "
        "e.g. `qwq run /path/to/model.gguf` or `qwq run /path/to/hf-checkpoint-dir`"
    )


def list_files(repo: str, patterns: tuple[str, ...], revision: str | None = None) -> tuple[str, list[RemoteFile]]:
    """The commit and the files of `repo` matching any of `patterns`, with their sizes and hashes."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        info = HfApi().model_info(repo, revision=revision, files_metadata=True, timeout=_METADATA_TIMEOUT_S)
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise DownloadError(f"{repo}: no such repository or revision on the Hugging Face Hub ({exc})") from None
    except HfHubHTTPError as exc:
        raise DownloadError(f"{repo}: the Hugging Face Hub refused the request ({exc})") from None
    except Exception as exc:  # httpx transport errors, DNS failures, offline mode: all mean "no hub here"
        raise _offline_error(repo, exc) from None
    files = [
        RemoteFile(
            path=sibling.rfilename,
            size=sibling.size or 0,
            sha256=sibling.lfs.sha256 if sibling.lfs else None,
            git_sha1=None if sibling.lfs else sibling.blob_id,
        )
        for sibling in info.siblings or []
        if any(fnmatch.fnmatch(sibling.rfilename, pattern) for pattern in patterns)
    ]
    if not files:
        raise DownloadError(f"{repo}: no files match {list(patterns)} at revision {info.sha}")
    return info.sha, files


def verify(directory: Path, files: list[RemoteFile]) -> None:
    """Raise DownloadError unless every file is present with the size and hash the Hub published."""
    for remote in files:
        local = directory / remote.path
        if not local.is_file():
            raise DownloadError(f"{local}: missing after download")
        if local.stat().st_size != remote.size:
            raise DownloadError(f"{local}: {local.stat().st_size} bytes, the Hub says {remote.size}")
        if remote.sha256 and file_digest(local, "sha256") != remote.sha256:
            raise DownloadError(f"{local}: SHA-256 differs from the Hub's {remote.sha256}; delete it and pull again")
        if remote.git_sha1 and file_digest(local, "sha1", git_blob=True) != remote.git_sha1:
            raise DownloadError(f"{local}: git hash differs from the Hub's {remote.git_sha1}; pull again")


def read_marker(path: Path) -> dict:
    """What a verified pull recorded (repo, commit, label, files); empty if the marker is unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _byte_counter(on_bytes: Callable[[int], None]) -> type:
    """A tqdm class for `hf_hub_download` that draws nothing and hands each file's byte count (a resumed
    file starting from the bytes it had) to `on_bytes`: qwq draws its own progress."""
    from tqdm import tqdm

    class ByteCounter(tqdm):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **{**kwargs, "disable": True})
            self.fetched = kwargs.get("initial") or 0
            on_bytes(self.fetched)

        def update(self, n: float | None = 1) -> bool | None:
            self.fetched += int(n or 0)
            on_bytes(self.fetched)
            return None

    return ByteCounter


def _digest(remote: RemoteFile) -> str:
    return f"sha256:{remote.sha256}" if remote.sha256 else f"git-sha1:{remote.git_sha1}"


def download(
    repo: str,
    patterns: tuple[str, ...],
    directory: Path,
    label: str = "",
    revision: str | None = None,
    progress: PullListener = ignore,
) -> Path:
    """Fetch the matching files of `repo` into `directory`, resuming partial files, then verify them all.
    `label` (the name it was pulled as) is recorded in the marker for `qwq list`; `progress` hears each
    file's bytes and the checksum step."""
    from huggingface_hub import hf_hub_download

    commit, files = list_files(repo, patterns, revision)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / VERIFIED_MARKER).unlink(missing_ok=True)
    logger.debug("pulling %s@%s: %d files", repo, commit[:12], len(files))
    for remote in files:
        step, digest, size = f"pulling {remote.path}", _digest(remote), remote.size

        def heard(done: int, step: str = step, digest: str = digest, size: int = size) -> None:
            progress(PullProgress(step, digest, size, min(done, size)))

        try:
            hf_hub_download(repo, remote.path, revision=commit, local_dir=directory, tqdm_class=_byte_counter(heard))
        except Exception as exc:
            raise DownloadError(f"{repo}/{remote.path}: download failed ({type(exc).__name__}: {exc})") from None
        heard(size)  # a file already complete on disk is not fetched again, and reports no bytes
    progress(PullProgress(VERIFYING))
    verify(directory, files)
    progress(PullProgress(WRITING_MANIFEST))
    marker = {"label": label, "repo": repo, "commit": commit, "files": [f.__dict__ for f in files]}
    (directory / VERIFIED_MARKER).write_text(json.dumps(marker, indent=1), encoding="utf-8")
    return directory
