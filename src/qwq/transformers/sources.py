"""Where a transformers-style `from_pretrained` name points, and the checkpoint facts transformers' classes carry
that qwq's tokenizer does not (the padding token).

Names are what `qwq.store.resolve` takes (paths, `qwen2.5-coder:0.5b`, `hf.co/OWNER/REPO`), plus transformers'
own spellings: a Hub id `OWNER/REPO`, and `gguf_file=` naming a GGUF inside a directory or a Hub repository.
"""

from __future__ import annotations

import json
from pathlib import Path

from qwq.errors import InvalidRequestError
from qwq.store import resolve
from qwq.tokenizer.tokenizer import Tokenizer
from qwq.weights.gguf import GGUFFile

_HUB = "hf.co/"


def _hub_id(name: str) -> bool:
    """`OWNER/REPO`, as transformers names a Hub repository."""
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "~"))


def checkpoint_path(name_or_path: str | Path, gguf_file: str | None = None) -> Path:
    """The local .gguf file or checkpoint directory for a name, pulled into qwq's store first if need be."""
    name = str(name_or_path)
    local = Path(name).expanduser()
    if gguf_file is None:
        return resolve(_HUB + name if not local.exists() and _hub_id(name) else name)
    if local.is_dir():
        return resolve(local / gguf_file)
    if name.startswith(_HUB) or _hub_id(name):
        return resolve(f"{name if name.startswith(_HUB) else _HUB + name}/{gguf_file}")
    raise InvalidRequestError(
        f"gguf_file={gguf_file!r} names a file inside a directory or a Hub repository (OWNER/REPO), "
        f"but {name!r} is neither",
        field="gguf_file",
    )


def load_tokenizer(path: Path) -> Tokenizer:
    return Tokenizer.from_gguf(GGUFFile(path)) if path.is_file() else Tokenizer.from_hf_dir(path)


def pad_token(tokenizer: Tokenizer, path: Path) -> str | None:
    """The checkpoint's padding token (GGUF metadata, or tokenizer_config.json), else its EOS token, which is what
    transformers pads with when a checkpoint names none."""
    found = None
    if path.is_file():
        index = GGUFFile(path).metadata("tokenizer.ggml.padding_token_id")
        found = tokenizer.backend.id_to_token(index) if index is not None else None
    elif (path / "tokenizer_config.json").is_file():
        # Tokenizer.from_hf_dir has already read this file and refused it if it is not valid JSON
        value = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8")).get("pad_token")
        found = value.get("content") if isinstance(value, dict) else value
    return found if isinstance(found, str) else tokenizer.eos_token
