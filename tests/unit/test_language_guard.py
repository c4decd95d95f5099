"""The language guard's parts against independent truth: hand-labelled tokens and messages, Unicode's Script
property (the `regex` module's \\p{Script}, which qwq itself does not use) over the whole Qwen vocabulary, and
greedy generation on the real 0.5B model with and without the mask."""

from __future__ import annotations

import codecs
import time
import unicodedata
from functools import cache
from itertools import product

import pytest
import regex
import torch

import qwq
from qwq.errors import InvalidRequestError
from qwq.local_models import fetch
from qwq.reasoning.language import (
    SCRIPTS,
    LanguageMask,
    ScriptTable,
    detect_scripts,
    mixing,
    script_table,
    scripts_for,
)
from qwq.tokenizer.tokenizer import Tokenizer
from qwq.tokenizer.vocabulary import vocabulary
from qwq.weights.gguf import GGUFFile

LATIN, HAN = frozenset({"latin"}), frozenset({"han"})
# the guard's script names as Unicode's Script values
UNICODE_SCRIPTS = {
    "latin": ["Latin"],
    "han": ["Han"],
    "kana": ["Hiragana", "Katakana"],
    "hangul": ["Hangul"],
    "cyrillic": ["Cyrillic"],
    "arabic": ["Arabic"],
}
ALLOWED_SETS = [LATIN, HAN, frozenset({"han", "kana"}), frozenset({"cyrillic"}), frozenset({"hangul"})]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_gguf(GGUFFile(fetch("qwen2.5-coder:0.5b")))


@pytest.fixture(scope="module")
def built(tokenizer: Tokenizer) -> tuple[ScriptTable, float]:
    """The table and the seconds its first build took (the vocabulary's bytes, cached elsewhere, excluded)."""
    vocabulary(tokenizer)
    start = time.perf_counter()
    return script_table(tokenizer), time.perf_counter() - start


@pytest.fixture(scope="module")
def table(built: tuple[ScriptTable, float]) -> ScriptTable:
    return built[0]


@pytest.fixture(scope="module")
def token_ids(tokenizer: Tokenizer) -> dict[bytes, int]:
    return {data: index for index, data in enumerate(vocabulary(tokenizer).token_bytes)}


def scripts_written(tokenizer: Tokenizer, table: ScriptTable, text: str) -> frozenset[str]:
    return frozenset().union(*(table.scripts_of(i) for i in tokenizer.encode(text)))


@cache
def foreign_letters(allowed: frozenset[str]) -> regex.Pattern:
    """Letters of a real script (not Common, not Inherited) other than the allowed ones, by Unicode's Scripts."""
    names = [name for script in allowed for name in UNICODE_SCRIPTS[script]]
    kept = "".join(rf"\p{{{name}}}" for name in ["Common", "Inherited", *names])
    return regex.compile(rf"(?V1)[\p{{L}}--[{kept}]]")


def foreign_in(text: str, allowed: frozenset[str]) -> list[str]:
    """Foreign letters in `text`, of those this Python's Unicode knows (regex may know a newer version's). The
    phonetic extensions count as Latin: the guard files their Greek-shaped modifiers (ᵝ ᵞ) with the Latin ones
    (ᵢ ᵃ), which maths uses and whose heads they share."""
    return [
        c
        for c in foreign_letters(allowed).findall(text)
        if unicodedata.category(c)[0] == "L" and not ("latin" in allowed and 0x1D00 <= ord(c) <= 0x1DBF)
    ]


def split(data: bytes) -> tuple[str, bytes]:
    """A token's bytes as (the characters it writes, the incomplete head it ends with), by Python's decoder."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    text = decoder.decode(data)
    return text, decoder.getstate()[0]


@cache
def completions(head: bytes) -> str:
    """Every character that starts with `head`, as one string (U+FFFD for the invalid ones)."""
    size = 2 if head[0] < 0xE0 else 3 if head[0] < 0xF0 else 4
    tails = product(range(0x80, 0xC0), repeat=size - len(head))
    return b"".join(head + bytes(tail) for tail in tails).decode("utf-8", errors="replace")


# -- hand-labelled tokens and fragments


@pytest.mark.parametrize(
    ("text", "scripts"),
    [
        ("Hello", {"latin"}),
        (" 世界", {"han"}),
        ("Привет", {"cyrillic"}),
        ("こんにちは", {"kana"}),
        ("안녕", {"hangul"}),
        ("مرحبا", {"arabic"}),
        ("नमस्ते", {"devanagari"}),
        ("שלום", {"hebrew"}),
        ("สวัสดี", {"thai"}),
        ("Γειά", {"greek"}),
        ("123", set()),
        (" = ", set()),
        ("→", set()),
        ("{", set()),
        ("，。！", set()),
        ("😀", set()),
        ("é", {"latin"}),
        ("Straße søster", {"latin"}),
    ],
)
def test_hand_labelled_strings(tokenizer: Tokenizer, table: ScriptTable, text: str, scripts: set[str]) -> None:
    assert scripts_written(tokenizer, table, text) == scripts


@pytest.mark.parametrize(
    ("data", "scripts"),
    [
        (b"\xe4\xb8", {"han"}),  # the head of U+4E00-U+4E3F (丗 is b"\xe4\xb8" + b"\x97")
        (b"\xe5", {"han"}),  # U+5000-U+5FFF: all ideographs
        (b"\xe3\x81", {"kana"}),  # U+3040-U+307F: hiragana
        (b"\xe3\x83", {"kana"}),  # U+30C0-U+30FF: katakana
        (b"\xed", {"hangul"}),  # U+D000-U+D7FF: syllables (the rest are surrogates)
        (b"\xd0", {"cyrillic"}),
        (b"\xe0\xa4", {"devanagari"}),
        (b"\xc3", {"latin"}),  # À-ÿ, with × and ÷ among them
        (b"\xe1\xbb", {"latin"}),  # Vietnamese ề ộ ữ
        (b"\xe2\x80", set()),  # general punctuation: — “ ” …
        (b"\xe2\x88", set()),  # maths operators: ∑ √ ∞
        (b"\xf0\x9f", set()),  # emoji
        (b"\x96", set()),  # a tail: the head before it decided the character
        (b"\x82\xe6\x95\xb0", {"han"}),  # a tail, then 数
    ],
)
def test_fragments(table: ScriptTable, token_ids: dict[bytes, int], data: bytes, scripts: set[str]) -> None:
    assert table.scripts_of(token_ids[data]) == scripts


def test_a_head_shared_by_several_scripts_carries_all_of_them(table: ScriptTable, token_ids: dict[bytes, int]) -> None:
    # b"\xe1" alone begins U+1000-U+1FFF: Georgian, Hangul jamo, Vietnamese, Greek extended, ...
    assert {"latin", "greek", "georgian", "hangul"} <= table.scripts_of(token_ids[b"\xe1"])


def test_special_tokens_are_never_masked(tokenizer: Tokenizer, table: ScriptTable) -> None:
    vocab = vocabulary(tokenizer)
    ids = sorted(vocab.special | vocab.added)
    assert tokenizer.token_id("<|im_end|>") in ids
    for allowed in ALLOWED_SETS:
        assert not table.mask_for(allowed)[ids].any()


def test_the_table_is_built_fast_and_cached(tokenizer: Tokenizer, built: tuple[ScriptTable, float]) -> None:
    table, seconds = built
    assert seconds < 2.0
    assert script_table(tokenizer) is table
    assert table.mask_for(LATIN) is table.mask_for(frozenset({"latin"}))
    mask = table.mask_for(LATIN)
    assert mask.shape == (len(vocabulary(tokenizer)),) and mask.dtype == torch.bool


# -- the whole vocabulary against Unicode's Script property


@pytest.mark.parametrize("allowed", ALLOWED_SETS, ids=lambda a: "+".join(sorted(a)))
def test_no_unmasked_token_writes_or_begins_a_foreign_letter(
    tokenizer: Tokenizer, table: ScriptTable, allowed: frozenset[str]
) -> None:
    """The guarantee: every character's lead byte is in one token, so if no unmasked token writes a foreign
    letter or ends in a head that can begin one, no foreign letter can be assembled."""
    mask = table.mask_for(allowed)
    written, heads = [], []
    for index, data in enumerate(vocabulary(tokenizer).token_bytes):
        if mask[index] or data.isascii():
            continue
        text, head = split(data)
        written.append(text)
        if head:
            heads.append(completions(head))
    assert foreign_in("".join(written), allowed) == []
    assert foreign_in("".join(heads), allowed) == []


@pytest.mark.parametrize("allowed", ALLOWED_SETS, ids=lambda a: "+".join(sorted(a)))
def test_masked_whole_tokens_hold_a_foreign_letter_or_mark(
    tokenizer: Tokenizer, table: ScriptTable, allowed: frozenset[str]
) -> None:
    """Nothing else is lost: a token that writes whole characters is masked only for a letter or mark of another
    script (or a script-specific modifier such as the kana length mark ー, which Unicode files as Common)."""
    kept = regex.compile(
        "[" + "".join(rf"\p{{{name}}}" for script in allowed for name in UNICODE_SCRIPTS[script]) + "]"
    )
    common = regex.compile(r"[\p{Common}\p{Inherited}]")

    def reason(char: str) -> bool:
        kind = unicodedata.category(char)
        if kind[0] not in "LM" or kept.match(char):
            return False
        return not common.match(char) or kind == "Lm" or kind[0] == "M"

    mask = table.mask_for(allowed)
    unexplained = []
    for index, data in enumerate(vocabulary(tokenizer).token_bytes):
        if not mask[index]:
            continue
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            continue  # a fragment: classed by its head (the test above)
        if not any(reason(c) for c in text):
            unexplained.append(text)
    assert unexplained == []


@pytest.mark.parametrize(
    ("allowed", "text"),
    [
        (LATIN, "Les élèves ont réussi l'examen ; ça m'étonne, Noël !"),
        (LATIN, "Die Straße ist schön. Grüße aus Köln, Æsir, søster, smörgåsbord."),
        (LATIN, "El niño comió ñoquis. Zażółć gęślą jaźń. Ông ấy đang đọc sách tiếng Việt."),
        (LATIN, "def f(x: int) -> int:\n    return {'a': x ** 2}  # O(n), ≤ ≥ ≠\n"),
        (LATIN, "3 × 4 = 12, 10÷2 = 5, √2 ≈ 1.414, ∑ xᵢ, ∞, ±1, 90°, ½, x² → ∀x∃y, ℝⁿ, 𝑥, aᵢ"),
        (LATIN, "Hello，world。（test）“quote” 【note】 — fine… 🎉👍✅"),
        (HAN, "质数是大于1的自然数，除了1和它本身外。计算：3×4=12；（一）【注意】「引用」《书名》……"),
        (frozenset({"han", "kana"}), "東京の天気はどうですか？カタカナとひらがな。"),
        (frozenset({"hangul"}), "안녕하세요, 반갑습니다! 1 + 2 = 3."),
        (frozenset({"cyrillic"}), "Съешь же ещё этих мягких французских булок, да выпей чаю."),
    ],
)
def test_text_of_the_allowed_scripts_is_never_masked(
    tokenizer: Tokenizer, table: ScriptTable, allowed: frozenset[str], text: str
) -> None:
    mask = table.mask_for(allowed)
    ids = tokenizer.encode(text)
    assert [tokenizer.decode([i]) for i in ids if mask[i]] == []


def test_the_price_of_a_shared_head_is_a_longer_spelling(
    tokenizer: Tokenizer, table: ScriptTable, token_ids: dict[bytes, int]
) -> None:
    """A space and ÷ are b" \\xc3" + b"\\xb7", and b" \\xc3" also begins " é": under han it is masked, but " "
    and "÷" are not, so the model can still write the sign."""
    mask = table.mask_for(HAN)
    assert tokenizer.encode(" ÷") == [token_ids[b" \xc3"], token_ids[b"\xb7"]]
    assert mask[token_ids[b" \xc3"]]
    assert not mask[tokenizer.encode(" ")].any() and not mask[tokenizer.encode("÷")].any()


# -- mixing, detection, language codes


@pytest.mark.parametrize(
    ("text", "allowed", "expected"),
    [
        ("Hello 世界", LATIN, (2, 7)),
        ("质数是 prime number", HAN, (11, 14)),
        ("Les élèves ont réussi.", LATIN, (0, 18)),
        ("x = 3, y = 4", HAN, (2, 2)),
        ("123 + 456 = 579。", LATIN, (0, 0)),
        ("東京はきれい", frozenset({"han", "kana"}), (0, 6)),
        ("東京はきれい", HAN, (4, 6)),
        ("안녕하세요 world", frozenset({"hangul"}), (5, 10)),
        ("So the answer is 答案是 42.", LATIN, (3, 16)),
    ],
)
def test_mixing(text: str, allowed: frozenset[str], expected: tuple[int, int]) -> None:
    assert mixing(text, allowed) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("What is a prime number?", {"latin"}),
        ("Bonjour, ça va ? Je voudrais un café.", {"latin"}),
        ("请用中文解释什么是质数", {"han"}),
        ("東京の天気はどうですか", {"han", "kana"}),
        ("こんにちは", {"han", "kana"}),
        ("안녕하세요, 잘 지내세요?", {"hangul"}),
        ("Привет, как дела?", {"cyrillic"}),
        ("مرحبا كيف حالك", {"arabic"}),
        ("नमस्ते, आप कैसे हैं?", {"devanagari"}),
        ("请解释 python 的 list comprehension", {"han"}),  # Latin code words inside a Chinese question
        ("What does 你好 mean in Chinese?", {"latin"}),  # a quoted phrase inside an English one
        ("12345 + 678 = ?", set()),
    ],
)
def test_detect_scripts(text: str, expected: set[str]) -> None:
    assert detect_scripts(text) == expected


def test_scripts_for() -> None:
    for code in ("en", "fr", "de", "es", "pt-BR", "EN_us", "vi", "pl"):
        assert scripts_for(code) == {"latin"}
    assert scripts_for("zh") == scripts_for("zh-CN") == {"han"}
    assert scripts_for("ja") == {"han", "kana"}
    assert scripts_for("ko") == {"hangul"}
    assert scripts_for("ru") == {"cyrillic"}
    assert scripts_for("ar") == {"arabic"}
    assert scripts_for("hi") == {"devanagari"}
    assert all(scripts_for(code) <= set(SCRIPTS) for code in ("el", "he", "th", "sr", "bn"))
    with pytest.raises(InvalidRequestError, match=r"'xx'.*\ben\b"):
        scripts_for("xx")


def test_unknown_script_names_are_refused(table: ScriptTable) -> None:
    with pytest.raises(InvalidRequestError, match="klingon"):
        table.mask_for(frozenset({"klingon"}))
    with pytest.raises(InvalidRequestError, match="klingon"):
        mixing("hi", frozenset({"klingon"}))


def test_language_mask_sets_masked_ids_to_minus_infinity(tokenizer: Tokenizer, table: ScriptTable) -> None:
    guard = LanguageMask(table, LATIN)
    logits = torch.randn(len(table))
    out = guard(logits)
    mask = table.mask_for(LATIN)
    assert torch.isneginf(out[mask]).all() and torch.equal(out[~mask], logits[~mask])
    han = tokenizer.encode("世界")[0]
    assert mask[han] and not mask[tokenizer.encode("Hello")[0]]
    wider = guard(torch.zeros(len(table) + 8))  # a model's vocabulary padded past the tokenizer's
    assert wider.shape == (len(table) + 8,) and torch.isneginf(wider[han]) and (wider[len(table) :] == 0).all()
    half = guard(torch.zeros(len(table), dtype=torch.bfloat16))
    assert half.dtype == torch.bfloat16 and torch.isneginf(half[han]) and half[tokenizer.encode("Hello")[0]] == 0


# -- end to end on the real model

CHINESE_PROMPTS = ["请用中文解释什么是质数。", "请用中文回答：为什么天空是蓝色的？"]  # answered briefly, in Chinese
ENGLISH_PROMPTS = ["Explain what a prime number is."]


@pytest.fixture(scope="module")
def model() -> qwq.Model:
    return qwq.load("qwen2.5-coder:0.5b", quant="int4", context_length=1024)


def reply(model: qwq.Model, question: str, guard: LanguageMask | None, max_tokens: int = 64) -> str:
    tokenizer = model.tokenizer
    ids = tokenizer.encode(tokenizer.apply_chat_template([{"role": "user", "content": question}]))
    processors = (lambda sequence, logits: guard(logits),) if guard else ()
    request = model.request(ids, model.params(max_new_tokens=max_tokens, temperature=0), processors=processors)
    return "".join(model.complete(request))


@pytest.mark.parametrize("question", CHINESE_PROMPTS)
def test_enforce_latin_on_a_chinese_question(model: qwq.Model, question: str) -> None:
    guard = LanguageMask(script_table(model.tokenizer), LATIN)
    unguarded, guarded = reply(model, question, None), reply(model, question, guard)
    assert foreign_in(unguarded, LATIN), unguarded  # the model answers in Chinese when left alone
    assert foreign_in(guarded, LATIN) == [], guarded
    assert regex.search(r"\p{Latin}", guarded), guarded  # and writes Latin letters, not just symbols


@pytest.mark.parametrize("question", ENGLISH_PROMPTS)
def test_enforce_han_on_an_english_question(model: qwq.Model, question: str) -> None:
    guard = LanguageMask(script_table(model.tokenizer), HAN)
    unguarded, guarded = reply(model, question, None, 32), reply(model, question, guard, 32)
    assert regex.search(r"\p{Latin}", unguarded), unguarded
    # the 0.5B model does not switch to Chinese; it falls back to digits and symbols, but no foreign letter
    assert foreign_in(guarded, HAN) == [], guarded
