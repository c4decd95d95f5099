"""The text side of a model: ids from text and back, special tokens, and the chat template.

A thin layer over a `tokenizers.Tokenizer` (from `tokenizer.json` or rebuilt from a GGUF), giving the
same ids as HF's tokenizer for the same checkpoint.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as BackendTokenizer

from qwq.errors import InvalidRequestError, ModelLoadError
from qwq.tokenizer.chat_template import Message, render_chat_template
from qwq.tokenizer.gguf_vocab import tokenizer_from_gguf
from qwq.weights.gguf import GGUFFile


def _token_text(value: Any) -> str | None:
    """tokenizer_config.json spells special tokens as strings or as AddedToken objects."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


class Tokenizer:
    def __init__(
        self,
        backend: BackendTokenizer,
        chat_template: str | None,
        bos_token: str | None,
        eos_token: str | None,
        source: str,
    ) -> None:
        self.backend = backend
        self.chat_template = chat_template
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.source = source
        self.special_ids = frozenset(
            index for index, token in backend.get_added_tokens_decoder().items() if token.special
        )

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def token_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def encode(self, text: str) -> list[int]:
        """Ids for `text`; special tokens written in the text (`<|im_end|>`) become their single ids, as in HF."""
        if not isinstance(text, str):
            raise InvalidRequestError(f"text to encode must be a str, got {type(text).__name__}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:  # a lone UTF-16 surrogate ("\ud800" in JSON) is not a character
            bad = text[exc.start]
            raise InvalidRequestError(
                f"the text holds an invalid character at position {exc.start}: a lone surrogate "
                f"(U+{ord(bad):04X}) is not valid Unicode"
            ) from None
        return self.backend.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        size = self.vocab_size
        try:
            values = [operator.index(i) for i in ids]  # ints, numpy ints and 0-d integer tensors
        except TypeError:
            raise InvalidRequestError(f"token ids must be integers, got {list(ids)[:5]!r}") from None
        bad = [i for i in values if not 0 <= i < size]
        if bad:
            raise InvalidRequestError(f"token ids out of range [0, {size}): {bad[:5]}")
        return self.backend.decode(values, skip_special_tokens=skip_special_tokens)

    def apply_chat_template(
        self,
        messages: Sequence[Message],
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
        **extra: Any,
    ) -> str:
        if self.chat_template is None:
            raise InvalidRequestError(f"{self.source}: this model has no chat template; use a plain prompt")
        return render_chat_template(
            self.chat_template,
            messages,
            add_generation_prompt=add_generation_prompt,
            tools=tools,
            special_tokens={"bos_token": self.bos_token or "", "eos_token": self.eos_token or ""},
            **extra,
        )

    @classmethod
    def from_gguf(cls, gguf: GGUFFile) -> Tokenizer:
        tokens = gguf.metadata("tokenizer.ggml.tokens")
        if not tokens:
            raise ModelLoadError(f"{gguf.path}: the file carries no tokenizer vocabulary")

        def token_for(key: str) -> str | None:
            index = gguf.metadata(key)
            return tokens[index] if index is not None and 0 <= index < len(tokens) else None

        return cls(
            tokenizer_from_gguf(gguf),
            chat_template=gguf.metadata("tokenizer.chat_template"),
            bos_token=token_for("tokenizer.ggml.bos_token_id"),
            eos_token=token_for("tokenizer.ggml.eos_token_id"),
            source=str(gguf.path),
        )

    @classmethod
    def from_hf_dir(cls, directory: Path) -> Tokenizer:
        path = directory / "tokenizer.json"
        if not path.is_file():
            raise ModelLoadError(f"{path}: not found (an HF checkpoint directory needs its tokenizer.json)")
        try:
            backend = BackendTokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception on malformed files
            raise ModelLoadError(f"{path}: not a valid tokenizer.json ({exc})") from None
        config_path = directory / "tokenizer_config.json"
        config: dict[str, Any] = {}
        if config_path.is_file():
            try:
                config = json.loads(config_path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ModelLoadError(f"{config_path}: not valid JSON ({exc})") from None
        template = config.get("chat_template")
        template_file = directory / "chat_template.jinja"
        if template_file.is_file():
            template = template_file.read_text(encoding="utf-8")
        if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default")
        return cls(
            backend,
            chat_template=template,
            bos_token=_token_text(config.get("bos_token")),
            eos_token=_token_text(config.get("eos_token")),
            source=str(directory),
        )
