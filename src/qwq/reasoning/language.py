r"""The language guard's parts: the script of every vocabulary token, the logits mask that keeps a reply to the
allowed scripts (enforce), and the mixing rate (warn); QwQ-style models drift into Chinese mid-reasoning.

A letter's script comes from its Unicode block, with the few exceptions Unicode's Scripts.txt makes (Python's
unicodedata has no Script property). Digits, punctuation (CJK punctuation "，。" included: it is not a letter,
and masking it would buy nothing), symbols, maths letters (𝑥, ℝ), whitespace and code are neutral: never
masked, never counted. Greek is a script, so an English reply under enforce writes \pi rather than π.

Byte-level BPE splits rare characters over tokens (丗 is b"\xe4\xb8" + b"\x97"). A token is read as [the tail
of a character begun before][whole characters][the head of one finished after], and its head is classed by
every letter it can begin. Masking each token that writes or can begin a foreign letter is enough: a
character's lead byte lies in exactly one token, so no foreign letter can be assembled, and a tail (bytes
0x80-0xBF) only completes a head that survived the mask, i.e. an allowed or neutral character; tails are
never classed, and are never masked for themselves. The price: a head shared by foreign and allowed characters
is masked (b" \xc3" begins " é" and " ÷": under han, " ÷" must be written " " + "÷"). The tests check both
directions over the whole Qwen vocabulary against Unicode's Script property.
"""

from __future__ import annotations

import bisect
import re
import unicodedata
import weakref
from collections import Counter
from functools import cache

import torch

from qwq.errors import InvalidRequestError
from qwq.tokenizer.tokenizer import Tokenizer
from qwq.tokenizer.vocabulary import vocabulary

SCRIPTS: tuple[str, ...] = (
    "latin",
    "greek",
    "cyrillic",
    "armenian",
    "georgian",
    "hebrew",
    "arabic",
    "devanagari",
    "bengali",
    "tamil",
    "thai",
    "hangul",
    "kana",
    "han",
    "other",  # letters of any script not named here (Ethiopic, Tibetan, Mongolian, ...)
    "neutral",  # no letters: digits, punctuation, symbols, whitespace, code, special tokens
)
_BIT = {name: 1 << i for i, name in enumerate(SCRIPTS[:-1])}

# (first, last, script) of the blocks whose letters and marks write a script; None: a block of neutral ones
# (maths letters, modifiers and diacritics that serve any script). Letters outside every block are "other".
_BLOCKS: tuple[tuple[int, int, str | None], ...] = (
    (0x0041, 0x005A, "latin"),
    (0x0061, 0x007A, "latin"),
    (0x00A0, 0x00BF, None),  # µ is a unit
    (0x00C0, 0x02AF, "latin"),  # Latin-1 letters, Extended-A/B, IPA
    (0x02B0, 0x036F, None),  # spacing modifiers and combining diacritics
    (0x0370, 0x03FF, "greek"),
    (0x0400, 0x052F, "cyrillic"),
    (0x0530, 0x058F, "armenian"),
    (0x0590, 0x05FF, "hebrew"),
    (0x0600, 0x06FF, "arabic"),
    (0x0750, 0x077F, "arabic"),
    (0x0870, 0x08FF, "arabic"),
    (0x0900, 0x097F, "devanagari"),
    (0x0980, 0x09FF, "bengali"),
    (0x0B80, 0x0BFF, "tamil"),
    (0x0E00, 0x0E7F, "thai"),
    (0x10A0, 0x10FF, "georgian"),
    (0x1100, 0x11FF, "hangul"),
    (0x1AB0, 0x1AFF, None),  # combining diacritics extended
    (0x1C80, 0x1C8F, "cyrillic"),
    (0x1C90, 0x1CBF, "georgian"),
    (0x1CD0, 0x1CFF, None),  # Vedic signs, shared by several Indic scripts
    (0x1D00, 0x1DBF, "latin"),  # phonetic extensions: ᵢ ᵃ, and the few Greek-shaped ones (ᵝ) with them
    (0x1DC0, 0x1DFF, None),  # combining diacritics supplement
    (0x1E00, 0x1EFF, "latin"),  # Latin Extended Additional (Vietnamese)
    (0x1F00, 0x1FFF, "greek"),
    (0x2000, 0x2BFF, None),  # punctuation, super/subscripts, letterlike (ℝ ℓ), arrows, maths operators
    (0x2C60, 0x2C7F, "latin"),
    (0x2D00, 0x2D2F, "georgian"),
    (0x2DE0, 0x2DFF, "cyrillic"),
    (0x2E80, 0x2FDF, "han"),  # radicals
    (0x3000, 0x303F, "han"),  # CJK punctuation is neutral as punctuation; its few letters (々) are han
    (0x3040, 0x30FF, "kana"),
    (0x3130, 0x318F, "hangul"),
    (0x31F0, 0x31FF, "kana"),
    (0x3400, 0x4DBF, "han"),
    (0x4E00, 0x9FFF, "han"),
    (0xA640, 0xA69F, "cyrillic"),
    (0xA720, 0xA7FF, "latin"),
    (0xA8E0, 0xA8FF, "devanagari"),
    (0xA960, 0xA97F, "hangul"),
    (0xAB30, 0xAB6F, "latin"),
    (0xAC00, 0xD7FF, "hangul"),
    (0xF900, 0xFAFF, "han"),
    (0xFB00, 0xFB06, "latin"),  # ligatures ﬁ ﬂ
    (0xFB13, 0xFB17, "armenian"),
    (0xFB1D, 0xFB4F, "hebrew"),
    (0xFB50, 0xFDFF, "arabic"),
    (0xFE00, 0xFE2F, None),  # variation selectors (emoji), combining half marks
    (0xFE70, 0xFEFF, "arabic"),
    (0xFF21, 0xFF3A, "latin"),  # full-width Latin
    (0xFF41, 0xFF5A, "latin"),
    (0xFF66, 0xFF9F, "kana"),  # half-width katakana
    (0xFFA0, 0xFFDC, "hangul"),
    (0x10780, 0x107BF, "latin"),
    (0x1AFF0, 0x1B16F, "kana"),
    (0x1D000, 0x1DAFF, None),  # musical notation, mathematical alphanumerics (𝑥 is a maths symbol)
    (0x1DF00, 0x1DFFF, "latin"),
    (0x20000, 0x323AF, "han"),  # extensions B-H and the compatibility supplement
    (0xE0000, 0xE0FFF, None),  # tags and variation selectors
)
# letters whose script is not their block's (as Unicode's Scripts.txt has them): Latin and Greek letters among
# the modifiers, super/subscripts and letterlike symbols (ⁿ, K, Ω), and signs any script uses (tatweel, 〆)
_EXCEPTIONS: dict[int, str | None] = {
    codepoint: script
    for first, last, script in (
        (0x00AA, 0x00AA, "latin"),
        (0x00BA, 0x00BA, "latin"),
        (0x02B0, 0x02B8, "latin"),
        (0x02E0, 0x02E4, "latin"),
        (0x0640, 0x0640, None),
        (0x2071, 0x2071, "latin"),
        (0x207F, 0x207F, "latin"),
        (0x2090, 0x209C, "latin"),
        (0x2126, 0x2126, "greek"),
        (0x212A, 0x212B, "latin"),
        (0x2132, 0x2132, "latin"),
        (0x214E, 0x214E, "latin"),
        (0x2183, 0x2184, "latin"),
        (0x3006, 0x3006, None),
        (0x303C, 0x303C, None),
        (0xAB65, 0xAB65, "greek"),
    )
    for codepoint in range(first, last + 1)
}
_EXCEPTION_POINTS = sorted(_EXCEPTIONS)
_STARTS = [first for first, _, _ in _BLOCKS]
_LAST_LETTER = 0x3FFFF  # no letters are assigned above plane 3
_ASCII_LETTER = re.compile(rb"[A-Za-z]")

# weight of one letter when finding a message's dominant script: a CJK character writes a syllable or a
# morpheme, about what three letters of an alphabet write
_WEIGHT = {"han": 3, "kana": 3, "hangul": 3}
_LATIN_YIELDS = 1 / 3  # Latin inside another language's message is mostly code and names: it loses to a third

_LANGUAGE_SCRIPTS: tuple[tuple[str, frozenset[str]], ...] = (  # ISO 639-1 codes (and "fil") by script
    (
        "af az bs ca cs cy da de en eo es et eu fi fil fr ga gl hr hu id is it la lt lv ms mt nl nb nn no pl pt ro "
        "sk sl sq sv sw tl tr uz vi",
        frozenset({"latin"}),
    ),
    ("be bg kk ky mk mn ru tg uk", frozenset({"cyrillic"})),
    ("ar fa ps ur", frozenset({"arabic"})),
    ("hi mr ne sa", frozenset({"devanagari"})),
    ("he iw yi", frozenset({"hebrew"})),
    ("bn as", frozenset({"bengali"})),
    ("sr", frozenset({"cyrillic", "latin"})),  # Serbian is written in both
    ("el", frozenset({"greek"})),
    ("hy", frozenset({"armenian"})),
    ("ka", frozenset({"georgian"})),
    ("ta", frozenset({"tamil"})),
    ("th", frozenset({"thai"})),
    ("zh", frozenset({"han"})),
    ("ja", frozenset({"han", "kana"})),
    ("ko", frozenset({"hangul"})),  # not han: Chinese drifting into Korean is the failure the guard is for
)
_LANGUAGES = {code: scripts for codes, scripts in _LANGUAGE_SCRIPTS for code in codes.split()}


def _block_script(codepoint: int) -> tuple[int, str | None, bool]:
    """(last codepoint of the block or gap holding `codepoint`, its script, whether it is a listed block)."""
    index = bisect.bisect_right(_STARTS, codepoint) - 1
    if index >= 0 and codepoint <= _BLOCKS[index][1]:
        return _BLOCKS[index][1], _BLOCKS[index][2], True
    following = _STARTS[index + 1] - 1 if index + 1 < len(_STARTS) else 0x10FFFF
    return following, None, False


def _script_bit(script: str | None) -> int:
    return _BIT[script] if script else 0


@cache
def _char_bits(char: str) -> int:
    """The script bit of one character: letters and marks of a script's block; letters and marks outside
    every block are "other"; everything that is not a letter or mark is neutral."""
    kind = unicodedata.category(char)[0]
    if kind not in "LM":
        return 0
    codepoint = ord(char)
    if codepoint in _EXCEPTIONS:
        return _script_bit(_EXCEPTIONS[codepoint])
    _, script, listed = _block_script(codepoint)
    return _script_bit(script) if listed else _BIT["other"]


def _span_bits(first: int, last: int) -> int:
    """The scripts of every letter or mark in codepoints first..last (what an incomplete head can begin)."""
    bits = 0
    low, high = bisect.bisect_left(_EXCEPTION_POINTS, first), bisect.bisect_right(_EXCEPTION_POINTS, last)
    for codepoint in _EXCEPTION_POINTS[low:high]:
        bits |= _char_bits(chr(codepoint))
    codepoint, last = first, min(last, _LAST_LETTER)
    while codepoint <= last:
        end, script, listed = _block_script(codepoint)
        end = min(end, last)
        # a block or gap writes one script, so its first letter or mark stands for all of them
        if (script is not None or not listed) and any(
            unicodedata.category(chr(c))[0] in "LM" and c not in _EXCEPTIONS for c in range(codepoint, end + 1)
        ):
            bits |= _script_bit(script) if listed else _BIT["other"]
        codepoint = end + 1
    return bits


@cache
def _head_bits(head: bytes) -> int:
    """The scripts of every letter whose UTF-8 encoding starts with `head` (a lead byte and 0-2 continuations)."""
    lead = head[0]
    length = 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4
    value = lead & (0x7F >> length)
    for byte in head[1:]:
        value = value << 6 | byte & 0x3F
    free = 6 * (length - len(head))
    first, last = value << free, (value << free) | ((1 << free) - 1)
    first = max(first, (0x80, 0x800, 0x10000)[length - 2])  # overlong heads decode to nothing
    return _span_bits(first, min(last, 0x10FFFF))


def _token_bits(data: bytes) -> int:
    """The scripts a token writes letters of, or can begin a letter of (see the module docstring)."""
    if data.isascii():
        return _BIT["latin"] if _ASCII_LETTER.search(data) else 0
    start = 0
    while start < min(3, len(data)) and 0x80 <= data[start] < 0xC0:
        start += 1  # the tail of a character begun in an earlier token: that token's head decided it
    end = len(data)
    for back in range(1, min(4, len(data) - start) + 1):
        byte = data[-back]
        if byte < 0x80:
            break
        if byte >= 0xC0:
            if (2 if byte < 0xE0 else 3 if byte < 0xF0 else 4) > back:
                end -= back
            break
    bits = 0
    for char in data[start:end].decode("utf-8", errors="replace"):
        bits |= _char_bits(char)
    if end < len(data) and 0xC2 <= data[end] <= 0xF4:  # 0xC0, 0xC1 and 0xF5+ lead nothing
        bits |= _head_bits(data[end:])
    return bits


def _bits_of(scripts: frozenset[str]) -> int:
    unknown = sorted(set(scripts) - set(SCRIPTS))
    if unknown:
        raise InvalidRequestError(f"unknown script(s) {unknown}; known: {', '.join(SCRIPTS)}")
    bits = 0
    for name in scripts:
        bits |= _BIT.get(name, 0)
    return bits


class ScriptTable:
    """Per token id, a bit set of the scripts it writes (or can begin) letters of; masks per allowed set."""

    def __init__(self, token_bits: torch.Tensor) -> None:
        self.token_bits = token_bits  # (V,) int32
        self._masks: dict[frozenset[str], torch.Tensor] = {}

    def __len__(self) -> int:
        return self.token_bits.shape[0]

    def scripts_of(self, token_id: int) -> frozenset[str]:
        """The scripts token `token_id` writes letters of; empty for neutral tokens and special tokens."""
        if not 0 <= token_id < len(self):
            raise InvalidRequestError(f"token id {token_id} out of range [0, {len(self)})")
        bits = int(self.token_bits[token_id])
        return frozenset(name for name, bit in _BIT.items() if bits & bit)

    def mask_for(self, allowed: frozenset[str]) -> torch.Tensor:
        """(V,) bool: True for every token that writes or begins a letter of a script not in `allowed`."""
        allowed = frozenset(allowed)
        mask = self._masks.get(allowed)
        if mask is None:
            mask = (self.token_bits & ~_bits_of(allowed)) != 0
            self._masks[allowed] = mask
        return mask


_tables: weakref.WeakKeyDictionary[Tokenizer, ScriptTable] = weakref.WeakKeyDictionary()


def script_table(tokenizer: Tokenizer) -> ScriptTable:
    """The tokenizer's ScriptTable, built once from its vocabulary's bytes; special and added tokens are
    neutral, so `<|im_end|>` is never masked."""
    table = _tables.get(tokenizer)
    if table is None:
        vocab = vocabulary(tokenizer)
        bits = [_token_bits(data) for data in vocab.token_bytes]
        for index in vocab.special | vocab.added:
            bits[index] = 0
        table = ScriptTable(torch.tensor(bits, dtype=torch.int32))
        _tables[tokenizer] = table
    return table


def scripts_for(language: str) -> frozenset[str]:
    """The scripts a reply in `language` (an ISO 639-1 code, "pt-BR" and "zh_Hans" read as "pt" and "zh")
    is written in."""
    code = language.strip().lower().replace("_", "-").split("-")[0] if isinstance(language, str) else None
    scripts = _LANGUAGES.get(code) if code else None
    if scripts is None:
        raise InvalidRequestError(
            f"unknown language code {language!r}; known: {', '.join(sorted(_LANGUAGES))}", field="language"
        )
    return scripts


def _letter_counts(text: str) -> Counter[str]:
    counts: Counter[str] = Counter()
    for char in text:
        bits = _char_bits(char)
        if bits:
            counts[SCRIPTS[bits.bit_length() - 1]] += 1
    return counts


def detect_scripts(text: str) -> frozenset[str]:
    """The script(s) a message is written in: the dominant one by (weighted) letter count, with kana adding
    han (Japanese writes both); empty when the text has no letters at all."""
    counts = _letter_counts(text)
    if not counts:
        return frozenset()
    weights = {script: n * _WEIGHT.get(script, 1) for script, n in counts.items()}
    total = sum(weights.values())
    others = {script: w for script, w in weights.items() if script != "latin"}
    best = max(weights, key=weights.__getitem__)
    if best == "latin" and others:
        challenger = max(others, key=others.__getitem__)
        if others[challenger] > total * _LATIN_YIELDS:
            best = challenger
    cjk = weights.get("han", 0) + weights.get("kana", 0)
    if best in ("han", "kana") and weights.get("kana", 0) >= 0.05 * cjk:
        return frozenset({"han", "kana"})
    return frozenset({best})


def mixing(text: str, allowed: frozenset[str]) -> tuple[int, int]:
    """(letters of scripts not in `allowed`, all letters) in `text`, a script's marks counted with its letters
    (Devanagari vowel signs): the warn mode's mixing rate."""
    _bits_of(allowed)
    counts = _letter_counts(text)
    return sum(n for script, n in counts.items() if script not in allowed), sum(counts.values())


class LanguageMask:
    """The enforce mode's logits processor body: tokens of foreign scripts get -inf, in one tensor op. The op is
    an add of a precomputed 0/-inf row: on CPU, masked_fill with a bool mask over 152k logits takes ~0.4 ms a
    token, the add ~0.015 ms."""

    def __init__(self, table: ScriptTable, allowed: frozenset[str]) -> None:
        self.allowed = frozenset(allowed)
        self._mask = table.mask_for(self.allowed)
        self._bias: torch.Tensor | None = None

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        bias = self._bias
        if bias is None or bias.device != logits.device or bias.dtype != logits.dtype or len(bias) != logits.shape[-1]:
            bias = self._bias = self._fit(logits)
        return logits + bias

    def _fit(self, logits: torch.Tensor) -> torch.Tensor:
        """The 0/-inf row for logits of this device, dtype and width (a model may pad its vocabulary past the
        tokenizer's; padded ids write nothing and stay unmasked)."""
        width = logits.shape[-1]
        mask = self._mask[:width]
        if mask.shape[0] < width:
            mask = torch.cat([mask, mask.new_zeros(width - mask.shape[0])])
        bias = torch.zeros(width, dtype=logits.dtype)
        return bias.masked_fill_(mask, float("-inf")).to(logits.device)
