"""Incremental detokenization for streaming: text pieces that never split a UTF-8 character.

A byte-level BPE token can hold part of a character; decoding it alone yields U+FFFD. We hold text back
until the decoded tail is whole (the prefix/read offsets scheme of vLLM and TGI), and decode only a short
window of recent ids so the cost per token stays constant.
"""

from __future__ import annotations

from qwq.tokenizer.tokenizer import Tokenizer

_REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self.prefix_offset = 0  # start of the window decoded for context
        self.read_offset = 0  # ids before this have been emitted as text

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def push(self, token_id: int) -> str:
        """Add one token; return the new text it completes (possibly empty)."""
        self.ids.append(token_id)
        emitted = self._decode(self.ids[self.prefix_offset : self.read_offset])
        current = self._decode(self.ids[self.prefix_offset :])
        if len(current) > len(emitted) and not current.endswith(_REPLACEMENT):
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.ids)
            return current[len(emitted) :]
        return ""

    def flush(self) -> str:
        """Whatever is still held back (bytes that never formed a character decode as U+FFFD)."""
        emitted = self._decode(self.ids[self.prefix_offset : self.read_offset])
        current = self._decode(self.ids[self.prefix_offset :])
        self.prefix_offset = self.read_offset = len(self.ids)
        return current[len(emitted) :]
