"""Each vocabulary token as the raw bytes it stands for, computed once per tokenizer.

The reasoning controls class every token by what it writes (its script, whether it ends a line or holds a
digit) without decoding it on every step. Qwen's byte-level BPE spells tokens in GPT-2's printable byte
alphabet ("Ġthe" is b" the"); a token can be a fragment of a UTF-8 character, so the bytes are kept as
bytes and callers decide how to read a fragment. Added tokens (`<|im_end|>`, `</think>`) are their text.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from functools import cache

from qwq.tokenizer.tokenizer import Tokenizer


@cache
def _byte_alphabet() -> dict[str, int]:
    """GPT-2's map from the printable stand-in characters back to the bytes they encode."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    stand_ins = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            stand_ins.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, stand_ins, strict=True)}


@dataclass(frozen=True)
class Vocabulary:
    """token_bytes[i]: what token i writes; special: the ids of control tokens (they write no text)."""

    token_bytes: tuple[bytes, ...]
    special: frozenset[int]
    added: frozenset[int]

    def __len__(self) -> int:
        return len(self.token_bytes)


_cache: weakref.WeakKeyDictionary[Tokenizer, Vocabulary] = weakref.WeakKeyDictionary()


def vocabulary(tokenizer: Tokenizer) -> Vocabulary:
    """The tokenizer's vocabulary as bytes (about a second for Qwen's 151k tokens; cached per tokenizer)."""
    cached = _cache.get(tokenizer)
    if cached is not None:
        return cached
    alphabet = _byte_alphabet()
    added = tokenizer.backend.get_added_tokens_decoder()
    pieces: list[bytes] = []
    for index in range(tokenizer.vocab_size):
        if index in added:
            pieces.append(added[index].content.encode("utf-8"))
            continue
        token = tokenizer.backend.id_to_token(index) or ""
        if all(ch in alphabet for ch in token):
            pieces.append(bytes(alphabet[ch] for ch in token))
        else:  # not a byte-level vocabulary: the token is its text
            pieces.append(token.encode("utf-8"))
    result = Vocabulary(tuple(pieces), tokenizer.special_ids, frozenset(added))
    _cache[tokenizer] = result
    return result
