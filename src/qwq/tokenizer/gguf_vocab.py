"""A `tokenizers` byte-level BPE tokenizer rebuilt from the vocabulary a GGUF file carries.

Built the way Qwen2's own `tokenizer.json` is (NFC normalizer, the qwen2 split regex, byte-level
pre-tokenizer and decoder), with the file's control tokens as special tokens and its user-defined
tokens as plain added tokens, so both stay whole in text.
"""

from __future__ import annotations

from functools import lru_cache

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

from qwq.errors import ModelLoadError, UnsupportedModelError
from qwq.weights.gguf import GGUFFile

# Qwen2's pre-tokenizer split (from its tokenizer.json): contractions, letters, single digits, symbols, spaces.
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_SPLITS = {"qwen2": QWEN2_SPLIT, "deepseek-r1-qwen": QWEN2_SPLIT}
_CONTROL, _USER_DEFINED = 3, 4


@lru_cache(maxsize=1)
def byte_alphabet() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters, which byte-level vocabularies are spelled in."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def _byte_level_spelling(token: str, alphabet: set[str]) -> str:
    if set(token) <= alphabet:
        return token
    spelling = byte_alphabet()
    return "".join(spelling[b] for b in token.encode("utf-8"))


def tokenizer_from_gguf(gguf: GGUFFile) -> Tokenizer:
    model_kind = gguf.metadata("tokenizer.ggml.model")
    pre = gguf.metadata("tokenizer.ggml.pre")
    if model_kind != "gpt2" or pre not in _SPLITS:
        raise UnsupportedModelError(
            f"{gguf.path}: tokenizer {model_kind!r} with pre-tokenizer {pre!r} is not supported (need gpt2 / qwen2)"
        )
    tokens = gguf.metadata("tokenizer.ggml.tokens")
    merges = gguf.metadata("tokenizer.ggml.merges") or []
    token_types = gguf.metadata("tokenizer.ggml.token_type") or [1] * len(tokens or ())
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in [*tokens, *merges]):
        raise ModelLoadError(f"{gguf.path}: tokenizer.ggml.tokens / merges are not lists of strings")
    if len(token_types) != len(tokens):
        raise ModelLoadError(f"{gguf.path}: {len(tokens)} tokens but {len(token_types)} token types")
    try:
        return _build(tokens, merges, token_types, _SPLITS[pre])
    except Exception as exc:  # tokenizers reports an inconsistent vocabulary as a bare Exception
        raise ModelLoadError(f"{gguf.path}: the tokenizer vocabulary is inconsistent ({exc})") from None


def _build(tokens: list[str], merges: list[str], token_types: list[int], split: str) -> Tokenizer:
    alphabet = set(byte_alphabet().values())
    vocab = {_byte_level_spelling(token, alphabet): index for index, token in enumerate(tokens)}
    pairs = [tuple(merge.split(" ", 1)) for merge in merges]
    backend = Tokenizer(
        models.BPE(vocab=vocab, merges=pairs, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False)
    )
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(split), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    # A control token spelled outside the byte alphabet is a converter mislabel; adding it would grow the vocabulary.
    backend.add_special_tokens(
        [
            AddedToken(token, special=True, normalized=False)
            for token, kind in zip(tokens, token_types, strict=True)
            if kind == _CONTROL and set(token) <= alphabet
        ]
    )
    backend.add_tokens(
        [
            AddedToken(token, special=False, normalized=False)
            for token, kind in zip(tokens, token_types, strict=True)
            if kind == _USER_DEFINED and token in vocab
        ]
    )
    return backend
