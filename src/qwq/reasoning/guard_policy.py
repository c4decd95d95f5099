"""A safety guard from a TOML policy file: categories of regular expressions and keywords, no model needed.

The file (tests/data/guard/policy.toml is a worked example):

    chunk_tokens = 32      # optional: new tokens between reply checks while streaming (default 32)
    overlap_chars = 256    # optional: how much of the previous chunk a streamed check re-reads (default 256)
    leetspeak = false      # optional: also match with digits/symbols inside words read as letters (b0mb -> bomb)

    [categories.weapons]                   # the table name is the Verdict's category
    description = "Instructions for ..."   # required: the Verdict's reason starts with it
    applies_to = ["prompt", "reply"]       # optional, default both
    keywords = ["pipe bomb"]               # whole words; any run of spaces/punctuation (or none) between them
    patterns = ['\\bhow to make\\b.{0,40}\\bbomb']   # Python regular expressions (TOML literal strings suit)
    exceptions = ['\\breport\\w*']         # optional regexes: a hit inside an exception's match is not a block

A category needs at least one keyword or pattern. Text is normalised before matching: Unicode NFKC, invisible
format characters (zero-width spaces, soft hyphens) removed, casefolded, curly apostrophes made straight, and
whitespace runs collapsed to one space; so write patterns in lower case, with a single space (or \\s+) for any
whitespace (in a TOML literal string an apostrophe is written \\x27). Matching is case-insensitive.
Prompts: each user message is checked on its own (system and tool text is the operator's, not the user's).
Replies: `check_reply` scans the whole text; `reply_checker` scans each pushed chunk plus `overlap_chars` of the
text before it, and holds a word cut by the chunk boundary back to the next push, so streaming costs linear
time and a phrase split across chunks is still found (a pattern spanning more than the overlap may not be).
A streamed check judges only the text pushed so far: write exceptions and lookaheads to end where the hit
ends, or a stream may block before the words that would have excused it arrive.
A regex policy has plain limits: it sees words, not intent, so paraphrases slip through and benign text that
shares the words can be blocked; it suits hard lines and as a cheap first pass before a guard model.
"""

from __future__ import annotations

import re
import tomllib
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qwq.errors import InvalidRequestError
from qwq.reasoning.guard_protocol import Messages, Verdict

ROLES = ("prompt", "reply")
_TOP_KEYS = {"chunk_tokens", "overlap_chars", "leetspeak", "categories"}
_CATEGORY_KEYS = {"description", "applies_to", "keywords", "patterns", "exceptions"}
_INVISIBLE = re.compile("[\u00ad\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]")
_SPACES = re.compile(r"\s+")
_QUOTES = str.maketrans("\u2018\u2019\u02bc", "'''")  # curly apostrophes, as people type them
# light leetspeak: a digit or symbol read as a letter only when it touches a letter (b0mb, k1ll, $ex), not "4 people"
_LEET = str.maketrans("0134578@$", "oieastbas")
_LEET_CHARS = re.compile(r"(?<=[^\W\d_])[0134578@$]+|[0134578@$]+(?=[^\W\d_])")
_TRAILING_WORD = re.compile(r"\w+\Z")
_WORD_REST = re.compile(r"\w*")
_WORD_CHAR = re.compile(r"\w")


def normalize(text: str, leetspeak: bool = False) -> str:
    """The text patterns see: NFKC, no invisible characters, casefolded, straight apostrophes, one space."""
    text = _SPACES.sub(" ", _INVISIBLE.sub("", unicodedata.normalize("NFKC", text)).casefold().translate(_QUOTES))
    if leetspeak:
        text = _LEET_CHARS.sub(lambda match: match.group().translate(_LEET), text)
    return text


@dataclass(frozen=True)
class Rule:
    """One compiled keyword or pattern, with the policy's own spelling of it for error messages."""

    source: str
    regex: re.Pattern[str]


@dataclass(frozen=True)
class Category:
    name: str
    description: str
    applies_to: frozenset[str]
    rules: tuple[Rule, ...]
    exceptions: tuple[Rule, ...]

    def first_hit(self, text: str) -> str | None:
        """The first matched text that no exception covers, or None."""
        for rule in self.rules:
            for match in rule.regex.finditer(text):
                if not self._excepted(text, match.start(), match.end()):
                    return match.group()
        return None

    def _excepted(self, text: str, start: int, end: int) -> bool:
        window = max(0, start - 200)
        for exception in self.exceptions:
            for allowed in exception.regex.finditer(text, window, min(len(text), end + 200)):
                if allowed.start() <= start and end <= allowed.end():
                    return True
        return False


class PolicyGuard:
    """A Guard that blocks text matching a policy category's keywords or patterns (see the module docstring)."""

    def __init__(
        self,
        categories: tuple[Category, ...],
        chunk_tokens: int = 32,
        overlap_chars: int = 256,
        leetspeak: bool = False,
    ) -> None:
        self.categories = categories
        self.chunk_tokens = chunk_tokens
        self.overlap_chars = overlap_chars
        self.leetspeak = leetspeak

    @classmethod
    def from_file(cls, path: str | Path) -> PolicyGuard:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise InvalidRequestError(f"{path}: cannot read the guard policy ({exc.strerror or exc})") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise InvalidRequestError(f"{path}: not a valid TOML policy ({exc})") from None
        return _parse(data, str(path))

    def check_prompt(self, messages: Messages) -> Verdict | None:
        for message in messages:
            if message.get("role") == "user":
                verdict = self.scan(str(message.get("content") or ""), "prompt")
                if verdict is not None:
                    return verdict
        return None

    def check_reply(self, messages: Messages, reply: str) -> Verdict | None:
        return self.scan(reply, "reply")

    def reply_checker(self, messages: Messages) -> PolicyReplyChecker:
        return PolicyReplyChecker(self)

    def scan(self, text: str, role: str) -> Verdict | None:
        """The first category (in file order) that applies to `role` and matches `text`."""
        variants = [normalize(text)]
        if self.leetspeak:
            read = normalize(text, leetspeak=True)
            if read != variants[0]:
                variants.append(read)
        for category in self.categories:
            if role not in category.applies_to:
                continue
            for variant in variants:
                hit = category.first_hit(variant)
                if hit is not None:
                    return Verdict(category.name, f"{category.description} (matched {_clip(hit)!r})")
        return None


class PolicyReplyChecker:
    """One reply's incremental policy check: each push scans the new text, `overlap_chars` before it, and a word
    the last push held back; a word still being written at the end of a push waits for the next one (else
    "meth" would match the start of "method" split across chunks)."""

    def __init__(self, guard: PolicyGuard) -> None:
        self._guard = guard
        self._pending = ""  # the overlap already scanned, then the held-back word

    def push(self, text: str, final: bool = False) -> Verdict | None:
        window = self._pending + text
        end = len(window)
        if not final:
            held = _TRAILING_WORD.search(window, max(0, end - self._guard.overlap_chars))
            if held is not None:
                end = held.start()
        verdict = self._guard.scan(window[:end], "reply") if end else None
        start = max(0, end - self._guard.overlap_chars)
        if start > 0 and _WORD_CHAR.match(window, start - 1):
            start = _WORD_REST.match(window, start, end).end()  # do not begin inside a word ("skill" is not "kill")
        self._pending = window[start:]
        return verdict


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _strings(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) and item.strip() for item in value):
        raise InvalidRequestError(f"{where} must be a list of non-empty strings")
    return value


def _keyword(word: str) -> re.Pattern[str]:
    parts = [re.escape(part) for part in re.split(r"[\W_]+", normalize(word)) if part]
    return re.compile(r"(?<!\w)" + r"[\W_]*".join(parts) + r"(?!\w)", re.IGNORECASE)


def _compile(pattern: str, where: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern, re.IGNORECASE)
    except re.error as exc:
        raise InvalidRequestError(f"{where}: pattern {pattern!r} is not a valid regular expression ({exc})") from None


def _category(name: str, table: Any, source: str) -> Category:
    where = f"{source}: categories.{name}"
    if not isinstance(table, dict):
        raise InvalidRequestError(f"{where} must be a table")
    unknown = sorted(set(table) - _CATEGORY_KEYS)
    if unknown:
        raise InvalidRequestError(f"{where}: unknown key(s) {unknown}; a category has {sorted(_CATEGORY_KEYS)}")
    description = table.get("description")
    if not isinstance(description, str) or not description.strip():
        raise InvalidRequestError(f"{where}: needs a description (a non-empty string)")
    applies_to = _strings(table.get("applies_to", list(ROLES)), f"{where}.applies_to")
    if not applies_to or not set(applies_to) <= set(ROLES):
        raise InvalidRequestError(f"{where}.applies_to must list one or both of {list(ROLES)}, got {applies_to}")
    keywords = _strings(table.get("keywords", []), f"{where}.keywords")
    patterns = _strings(table.get("patterns", []), f"{where}.patterns")
    if not keywords and not patterns:
        raise InvalidRequestError(f"{where}: needs at least one keyword or pattern")
    rules = [Rule(word, _keyword(word)) for word in keywords]
    rules += [Rule(pattern, _compile(pattern, where)) for pattern in patterns]
    exceptions = [Rule(p, _compile(p, where)) for p in _strings(table.get("exceptions", []), f"{where}.exceptions")]
    return Category(name, description.strip(), frozenset(applies_to), tuple(rules), tuple(exceptions))


def _positive_int(data: dict[str, Any], key: str, default: int, source: str) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidRequestError(f"{source}: {key} must be a positive integer, got {value!r}")
    return value


def _parse(data: dict[str, Any], source: str) -> PolicyGuard:
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise InvalidRequestError(f"{source}: unknown key(s) {unknown}; a policy has {sorted(_TOP_KEYS)}")
    categories = data.get("categories")
    if not isinstance(categories, dict) or not categories:
        raise InvalidRequestError(f"{source}: needs at least one [categories.NAME] table")
    leetspeak = data.get("leetspeak", False)
    if not isinstance(leetspeak, bool):
        raise InvalidRequestError(f"{source}: leetspeak must be true or false, got {leetspeak!r}")
    return PolicyGuard(
        tuple(_category(name, table, source) for name, table in categories.items()),
        chunk_tokens=_positive_int(data, "chunk_tokens", 32, source),
        overlap_chars=_positive_int(data, "overlap_chars", 256, source),
        leetspeak=leetspeak,
    )
