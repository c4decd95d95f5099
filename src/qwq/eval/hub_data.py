"""The official benchmark sets fetched from the Hugging Face Hub (`huggingface_hub.hf_hub_download` of a dataset
repository's files, cached by huggingface_hub), read as rows: JSON Lines, JSON, CSV, or Parquet (with pyarrow).

Used only when no local file is found (see data_dir.py). Gated sets (GPQA) need an account that accepted the
terms and a token: `--hf-token` or $HF_TOKEN.
"""

from __future__ import annotations

import csv
import fnmatch
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from qwq.errors import DownloadError
from qwq.eval.jsonl import read_records

logger = logging.getLogger(__name__)


def repo_files(repo: str, *, revision: str | None = None, token: str | None = None) -> list[str]:
    """The file names in dataset repository `repo` (one metadata call: fails at once when offline)."""
    from huggingface_hub import list_repo_files

    try:
        return list_repo_files(repo, repo_type="dataset", revision=revision, token=token)
    except Exception as exc:  # huggingface_hub raises many types: offline, gated, missing
        raise _fetch_error(repo, exc) from None


def hub_rows(
    repo: str,
    patterns: Sequence[str],
    *,
    revision: str | None = None,
    token: str | None = None,
    files: Sequence[str] | None = None,
) -> tuple[list[dict[str, Any]], str]:
    """The rows of the repository's files that match the first of `patterns` any file matches (or of `files`,
    named exactly), in file-name order, and a description of where they came from."""
    from huggingface_hub import hf_hub_download

    if files is None:
        names = repo_files(repo, revision=revision, token=token)
        files = next((sorted(fnmatch.filter(names, p)) for p in patterns if fnmatch.filter(names, p)), [])
        if not files:
            raise DownloadError(f"dataset {repo} has no file matching {list(patterns)}; it has {names[:20]}")
    rows: list[dict[str, Any]] = []
    for name in files:
        logger.info("fetching %s from dataset %s", name, repo)
        try:
            path = hf_hub_download(repo, name, repo_type="dataset", revision=revision, token=token)
        except Exception as exc:
            raise _fetch_error(repo, exc) from None
        rows += read_rows(Path(path))
    at = f"@{revision}" if revision else ""
    return rows, f"hf://datasets/{repo}{at}/{','.join(files)}"


def read_rows(path: Path) -> list[dict[str, Any]]:
    """A table file's rows as dicts, by its extension."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return list(read_records(path))
    if suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, list) else list(data.values())
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as parquet
        except ImportError:
            raise DownloadError(f"{path.name} is Parquet: reading it needs pyarrow (pip install pyarrow)") from None
        return parquet.read_table(path).to_pylist()
    raise DownloadError(f"{path}: no reader for {suffix or 'files without an extension'}")


def _fetch_error(repo: str, exc: Exception) -> DownloadError:
    name = type(exc).__name__
    hint = "put the file in a data folder (--data-dir or $QWQ_EVAL_DATA) to run without the Hub"
    if "Gated" in name or "401" in str(exc) or "403" in str(exc):
        hint = "it is gated: accept its terms on huggingface.co and pass a token (--hf-token or $HF_TOKEN)"
    return DownloadError(f"could not fetch dataset {repo} from the Hugging Face Hub ({name}: {exc}); {hint}")
