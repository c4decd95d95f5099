"""`AutoTokenizer` and the tokenizer it returns: qwq's tokenizer behind the calls transformers' tokenizers answer
(encode with padding into a `BatchEncoding`, the chat template, decode), giving the same ids and text."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from qwq.errors import InvalidRequestError
from qwq.tokenizer.chat_template import Message
from qwq.tokenizer.tokenizer import Tokenizer
from qwq.transformers.sources import checkpoint_path, load_tokenizer, pad_token

PADDING_SIDES = ("left", "right")
# accepted for transformers code's sake; they change nothing here (no checkpoint code is run, and qwq has one
# tokenizer implementation)
_NO_OP_KEYWORDS = ("trust_remote_code", "use_fast")


def token_list(value: Any) -> list[int]:
    """Token ids from a tensor, a numpy array, a sequence or a single id, as a flat list."""
    values = value.tolist() if hasattr(value, "tolist") else value
    return [values] if isinstance(values, int) else list(values)


class BatchEncoding(dict):
    """What a tokenizer call returns: `input_ids` and `attention_mask` by key or attribute, so `**inputs` passes
    them to `generate`; `.to(device)` moves the tensors (in place, returning itself, as transformers does)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def to(self, device: str | torch.device) -> BatchEncoding:
        for key, value in self.items():
            if isinstance(value, torch.Tensor):
                self[key] = value.to(device)
        return self


def _padded_length(rows: list[list[int]], padding: bool | str, max_length: int | None) -> int | None:
    """The length every row is padded to, or None for no padding."""
    if padding in (False, "do_not_pad"):
        return None
    if padding in (True, "longest"):
        return max(map(len, rows), default=0)
    if padding == "max_length":
        if max_length is None:
            raise InvalidRequestError("padding='max_length' needs max_length", field="max_length")
        return max(max_length, *map(len, rows))
    raise InvalidRequestError(
        f"padding={padding!r} is not supported; use True, 'longest', 'max_length' or False", field="padding"
    )


class CompatTokenizer:
    """A qwq tokenizer as transformers' tokenizers are called. Padding goes on the left by default (what
    generation with a decoder-only model needs); set `padding_side` or pass it per call to change that."""

    def __init__(self, tokenizer: Tokenizer, pad_token: str | None, padding_side: str = "left") -> None:
        if padding_side not in PADDING_SIDES:
            raise InvalidRequestError(
                f"padding_side must be 'left' or 'right', got {padding_side!r}", field="padding_side"
            )
        self.tokenizer = tokenizer
        self.pad_token = pad_token
        self.padding_side = padding_side

    @property
    def eos_token(self) -> str | None:
        return self.tokenizer.eos_token

    @property
    def bos_token(self) -> str | None:
        return self.tokenizer.bos_token

    @property
    def eos_token_id(self) -> int | None:
        return self.tokenizer.token_id(self.eos_token) if self.eos_token else None

    @property
    def bos_token_id(self) -> int | None:
        return self.tokenizer.token_id(self.bos_token) if self.bos_token else None

    @property
    def pad_token_id(self) -> int | None:
        return self.tokenizer.token_id(self.pad_token) if self.pad_token else None

    @property
    def chat_template(self) -> str | None:
        return self.tokenizer.chat_template

    def encode(
        self, text: str, add_special_tokens: bool = True, return_tensors: str | None = None
    ) -> list[int] | torch.Tensor:
        """Ids for `text` (Qwen2's tokenizers add no special tokens, so `add_special_tokens` changes nothing)."""
        return self(text, return_tensors=return_tensors, add_special_tokens=add_special_tokens)["input_ids"]

    def __call__(
        self,
        text: str | Sequence[str],
        padding: bool | str = False,
        truncation: bool = False,
        max_length: int | None = None,
        return_tensors: str | None = None,
        padding_side: str | None = None,
        return_attention_mask: bool = True,
        add_special_tokens: bool = True,
    ) -> BatchEncoding:
        """Encode a string (one row) or a list of strings (a batch): lists of ids, or with return_tensors="pt"
        (batch, length) tensors, which need rows of one length (`padding=True`)."""
        single = isinstance(text, str)
        rows = [self.tokenizer.encode(t) for t in ([text] if single else text)]
        return self._batch(
            rows, single, padding, truncation, max_length, return_tensors, padding_side, return_attention_mask
        )

    def _batch(
        self,
        rows: list[list[int]],
        single: bool,
        padding: bool | str,
        truncation: bool,
        max_length: int | None,
        return_tensors: str | None,
        padding_side: str | None,
        return_attention_mask: bool,
    ) -> BatchEncoding:
        if return_tensors not in (None, "pt"):
            raise InvalidRequestError(
                f"return_tensors={return_tensors!r} is not supported; use 'pt' or None", field="return_tensors"
            )
        side = padding_side or self.padding_side
        if side not in PADDING_SIDES:
            raise InvalidRequestError(f"padding_side must be 'left' or 'right', got {side!r}", field="padding_side")
        if truncation and max_length is not None:
            rows = [row[:max_length] for row in rows]
        masks = [[1] * len(row) for row in rows]
        width = _padded_length(rows, padding, max_length)
        if width is not None and any(len(row) < width for row in rows):
            if self.pad_token_id is None:
                raise InvalidRequestError(
                    f"{self.tokenizer.source}: this tokenizer has no padding token", field="padding"
                )
            for i, row in enumerate(rows):
                fill = width - len(row)
                if side == "left":
                    rows[i], masks[i] = [self.pad_token_id] * fill + row, [0] * fill + masks[i]
                else:
                    rows[i], masks[i] = row + [self.pad_token_id] * fill, masks[i] + [0] * fill
        ids: Any = rows
        if return_tensors == "pt":
            if len({len(row) for row in rows}) > 1:
                raise InvalidRequestError(
                    "the texts encode to different lengths: pass padding=True to make one tensor of them",
                    field="padding",
                )
            ids, masks = torch.tensor(rows, dtype=torch.long), torch.tensor(masks, dtype=torch.long)
        elif single:
            ids, masks = rows[0], masks[0]
        encoding = BatchEncoding(input_ids=ids)
        if return_attention_mask:
            encoding["attention_mask"] = masks
        return encoding

    def apply_chat_template(
        self,
        conversation: Sequence[Message] | Sequence[Sequence[Message]],
        tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = False,
        tokenize: bool = True,
        padding: bool | str = False,
        truncation: bool = False,
        max_length: int | None = None,
        return_tensors: str | None = None,
        return_dict: bool = False,
        **template_kwargs: Any,
    ) -> str | list[str] | list[int] | list[list[int]] | torch.Tensor | BatchEncoding:
        """The chat template applied to one conversation or a list of them: text (tokenize=False), else ids as
        transformers 4 returns them (a BatchEncoding with return_dict=True). Other keywords reach the template."""
        batched = bool(conversation) and not isinstance(conversation[0], Mapping)
        conversations = conversation if batched else [conversation]
        texts = [
            self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=add_generation_prompt, tools=tools, **template_kwargs
            )
            for messages in conversations
        ]
        if not tokenize:
            return texts if batched else texts[0]
        rows = [self.tokenizer.encode(text) for text in texts]
        encoding = self._batch(rows, not batched, padding, truncation, max_length, return_tensors, None, True)
        return encoding if return_dict else encoding["input_ids"]

    def decode(
        self, token_ids: Any, skip_special_tokens: bool = False, clean_up_tokenization_spaces: bool | None = None
    ) -> str:
        """Text for one row of ids (a tensor, a list or a single id)."""
        if clean_up_tokenization_spaces:
            raise InvalidRequestError(
                "clean_up_tokenization_spaces=True is not supported: Qwen's tokenizers decode without it",
                field="clean_up_tokenization_spaces",
            )
        return self.tokenizer.decode(token_list(token_ids), skip_special_tokens=skip_special_tokens)

    def batch_decode(
        self, sequences: Any, skip_special_tokens: bool = False, clean_up_tokenization_spaces: bool | None = None
    ) -> list[str]:
        return [self.decode(row, skip_special_tokens, clean_up_tokenization_spaces) for row in sequences]


class AutoTokenizer:
    """transformers' entry point: `AutoTokenizer.from_pretrained(name_or_path, gguf_file=None)`."""

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | Path,
        *,
        gguf_file: str | None = None,
        padding_side: str = "left",
        **options: Any,
    ) -> CompatTokenizer:
        """The tokenizer of a model name, .gguf file or checkpoint directory (see `qwq.transformers.sources`)."""
        for key in options:
            if key not in _NO_OP_KEYWORDS:
                raise InvalidRequestError(
                    f"AutoTokenizer.from_pretrained() keyword {key!r} is not supported by qwq.transformers", field=key
                )
        path = checkpoint_path(pretrained_model_name_or_path, gguf_file)
        tokenizer = load_tokenizer(path)
        return CompatTokenizer(tokenizer, pad_token(tokenizer, path), padding_side)
