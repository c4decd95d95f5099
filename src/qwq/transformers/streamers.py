"""transformers' text streamers: `generate(streamer=...)` calls `put` with the prompt's ids, then with each
step's new ids, and `end` once the reply ends. `TextStreamer` prints the text as it comes; `TextIteratorStreamer`
hands it to a reader in another thread. A transformers streamer passed to qwq's `generate` works the same way."""

from __future__ import annotations

import queue
from typing import Any

import torch

from qwq.errors import InvalidRequestError
from qwq.transformers.tokenizer import token_list

_END = object()  # the iterator streamer's end-of-reply mark


class TextStreamer:
    """Prints the reply to stdout piece by piece (and a newline at its end); `skip_prompt` leaves the prompt
    out; `decode_kwargs` (`skip_special_tokens=True`) go to the tokenizer's decode."""

    def __init__(self, tokenizer: Any, skip_prompt: bool = False, **decode_kwargs: Any) -> None:
        self.tokenizer = tokenizer
        self.skip_prompt = skip_prompt
        self.decode_kwargs = decode_kwargs
        self._ids: list[int] = []  # the current line's ids: decoding the line whole keeps split characters whole
        self._shown = 0  # characters of the current line already handed on
        self._prompt_next = True

    def put(self, value: Any) -> None:
        if isinstance(value, torch.Tensor) and value.dim() > 1:
            if value.shape[0] > 1:
                raise InvalidRequestError(
                    f"a streamer follows one row; this batch has {value.shape[0]}", field="streamer"
                )
            value = value[0]
        prompt, self._prompt_next = self._prompt_next, False
        if prompt and self.skip_prompt:
            return
        self._ids += token_list(value)
        text = self.tokenizer.decode(self._ids, **self.decode_kwargs)
        if text.endswith("\ufffd"):
            return  # a character split across tokens: wait for its other bytes
        piece = text[self._shown :]
        if text.endswith("\n"):
            self._ids, self._shown = [], 0  # a finished line: the next one decodes on its own, so decoding stays short
        else:
            self._shown = len(text)
        if piece:
            self.on_finalized_text(piece)

    def end(self) -> None:
        text = self.tokenizer.decode(self._ids, **self.decode_kwargs) if self._ids else ""
        piece = text[self._shown :]
        self._ids, self._shown, self._prompt_next = [], 0, True
        self.on_finalized_text(piece, stream_end=True)

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        """Where each piece goes; subclasses send it elsewhere."""
        print(text, end="\n" if stream_end else "", flush=True)


class TextIteratorStreamer(TextStreamer):
    """The reply's pieces as an iterator, for a reader in another thread than the one running `generate`;
    `timeout` (seconds) bounds each wait for the next piece (`queue.Empty` when it passes)."""

    def __init__(
        self, tokenizer: Any, skip_prompt: bool = False, timeout: float | None = None, **decode_kwargs: Any
    ) -> None:
        super().__init__(tokenizer, skip_prompt, **decode_kwargs)
        self.timeout = timeout
        self._queue: queue.Queue[Any] = queue.Queue()

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self._queue.put(text)
        if stream_end:
            self._queue.put(_END)

    def __iter__(self) -> TextIteratorStreamer:
        return self

    def __next__(self) -> str:
        item = self._queue.get(timeout=self.timeout)
        if item is _END:
            raise StopIteration
        return item
