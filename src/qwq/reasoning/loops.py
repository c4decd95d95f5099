"""Streaming loop detection for a reasoning model's output: one `push` per generated token, O(1) amortised.

Small models fall into loops: a block copied verbatim, the same block with a counter or a few words changed
("157. Loop", "158. Loop", ...), one short phrase written hundreds of times. Two detectors watch the stream:

- exact cycles: each 8-gram's last position gives a candidate period p; a candidate lives while each new
  token equals the one p back, keeping its run length, so a handful of candidates cost O(1) a token.
- approximate cycles, over symbols: a token, or a whole number (a counter going 9 -> 10 keeps the period).
  Each symbol's 4-gram is spelled as text (digits kept, but a list counter, "12." at a line start, is one
  mark) and masked (every number one mark). A 4-gram's last occurrence proposes a period; a candidate then
  compares each new 4-gram with the one a period back (or two, when only the last copy swapped a word),
  re-aligns by up to 1 + p/10 (at most 4) symbols after a word of another length, dies once most of its last
  24 symbols miss, and counts how many of its 4-grams were copied as text.

A hit needs (`LoopThresholds`; the values are what the corpus in tests/data/loops, built by
scripts/make_loop_corpus.py, supports):
- exact: 3 copies and 64 tokens. Two copies are a re-check; 64 tokens keep "}", "---", table rules and short
  repeated rows out (a 4-token line must come 16 times).
- approximate: 4 copies (a block said three times with changes is still a re-check) and 64 tokens, with 70%
  of the run's 4-grams copied as text. An enumeration that fills a template with new numbers every time
  ("Case k: ...", "Wait, let me verify step k: a + b = c ...") copies 50-60% and stays out; counter loops copy
  about all of it and loops with a word or two swapped per copy 70-95%.
- approximate with a period of at most 32 tokens (a line): 90% copied, so table rows and "7 x k = 7k" lines,
  one new cell or number each, are not loops, while "12. Loop" (only the counter changes) is.
- approximate: a letter in the first copy; a list of numbers ("2\n3\n5", "| 1 | 4 |") is never a loop.
Not caught, by design: a loop whose copies change a number in most sentences (a "last digit of 7^k" loop
counting k up) reads as such an enumeration; it is caught only where its text starts to repeat.

Kinds: "degenerate" for a period of at most 16 tokens (a short phrase or line), else "verbatim" (exact) or
"near-verbatim". `onset` is where the first copy begins (exact: to the token; approximate: within a few
tokens), `period` the last copy's length in tokens. A hit is reported once: a hit whose onset lies in looping
text already reported (it stays covered while any candidate still fires) is not. Without a tokenizer nothing
is masked and every token counts as a letter: exact cycles and word-for-word approximate ones are still found.
`truncate` replays the kept tokens (the engine rolls back rarely; about 5 us a token).
"""

from __future__ import annotations

import weakref
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, fields

from qwq.errors import InvalidRequestError
from qwq.tokenizer.tokenizer import Tokenizer
from qwq.tokenizer.vocabulary import vocabulary

KINDS = ("verbatim", "near-verbatim", "degenerate")
_EXACT_GRAM = 8  # long enough that a repeated 8-gram is rarely chance, short enough to catch a loop early
_NEAR_GRAM = 4  # short enough that a swapped word spoils only a few of a copy's grams
_CANDIDATES = 8  # candidates alive at once per detector; chance ones die within a few tokens
_NUMBER = -1  # the mask of every number
_COUNTER = -2  # the text of a number that begins a line ("12. ...")
_BACK_SCAN = 4096  # how far back a new exact candidate's run is measured


@dataclass(frozen=True)
class LoopHit:
    """A loop: its first copy begins at token `onset` of the pushed stream; the block is `period` tokens."""

    onset: int
    period: int
    kind: str


@dataclass(frozen=True)
class LoopThresholds:
    """What a loop must reach before it is reported (see the module docstring for why these values)."""

    min_copies: int = 3
    min_span: int = 64
    near_min_copies: int = 4
    near_min_copied: float = 0.7
    short_cycle: int = 32
    short_min_copied: float = 0.9
    min_words: int = 1
    degenerate_period: int = 16
    max_period: int = 2048

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if not value > 0 or (isinstance(value, float) and value > 1):
                what = "a fraction in (0, 1]" if isinstance(value, float) else "positive"
                raise InvalidRequestError(f"loop threshold {field.name} must be {what}, got {value!r}", field.name)


@dataclass(frozen=True)
class _TokenTable:
    """Per vocabulary token (1 or 0): writes a digit, writes a letter, ends a line, writes only whitespace,
    begins with the mark after a list counter ("12." "12)" "12:")."""

    digit: bytes
    word: bytes
    newline: bytes
    blank: bytes
    counter_mark: bytes


_tables: weakref.WeakKeyDictionary[Tokenizer, _TokenTable] = weakref.WeakKeyDictionary()


def _token_table(tokenizer: Tokenizer) -> _TokenTable:
    cached = _tables.get(tokenizer)
    if cached is not None:
        return cached
    vocab = vocabulary(tokenizer)
    digit, word, newline, blank, counter_mark = (bytearray(len(vocab)) for _ in range(5))
    for index, piece in enumerate(vocab.token_bytes):
        if index in vocab.added:
            newline[index] = 1  # a control token (<|im_end|>, <think>) breaks the text like a line end
            continue
        digit[index] = any(48 <= b <= 57 for b in piece)
        word[index] = any(ch.isalpha() for ch in piece.decode("utf-8", "ignore"))
        newline[index] = b"\n" in piece
        blank[index] = not piece.strip()
        counter_mark[index] = piece[:1] in (b".", b")", b":")
    table = _TokenTable(bytes(digit), bytes(word), bytes(newline), bytes(blank), bytes(counter_mark))
    _tables[tokenizer] = table
    return table


class _ExactCycles:
    """Candidate periods from repeated 8-grams, each with its run of tokens equal to the token p back."""

    def __init__(self, ids: list[int], limits: LoopThresholds) -> None:
        self.ids, self.limits = ids, limits
        self.last: dict[tuple[int, ...], int] = {}
        self.runs: dict[int, int] = {}

    def push(self) -> LoopHit | None:
        ids, i, runs = self.ids, len(self.ids) - 1, self.runs
        for p in list(runs):
            if ids[i] == ids[i - p]:
                runs[p] += 1
            else:
                del runs[p]
        if i >= _EXACT_GRAM - 1:
            gram = tuple(ids[i - _EXACT_GRAM + 1 : i + 1])
            seen = self.last.get(gram)
            self.last[gram] = i
            fits = seen is not None and i - seen not in runs and i - seen <= self.limits.max_period
            if fits and len(runs) < _CANDIDATES:
                runs[i - seen] = self._run_back(i, i - seen)
        best = None
        for p, run in runs.items():
            if run >= (self.limits.min_copies - 1) * p and run + p >= self.limits.min_span:
                onset = i - run - p + 1
                if best is None or (onset, p) < (best.onset, best.period):
                    kind = "degenerate" if p <= self.limits.degenerate_period else "verbatim"
                    best = LoopHit(onset, p, kind)
        return best

    def _run_back(self, i: int, p: int) -> int:
        x, stop = i, max(p - 1, i - _BACK_SCAN)
        while x > stop and self.ids[x] == self.ids[x - p]:
            x -= 1
        return i - x


class _Candidate:
    """An approximate period (in symbols) and its run: symbols whose 4-gram recurs one period back.

    The offset it compares at may drift to any in `search` (the period +- 1 + p/10, at most 4): a word swapped
    for one of another length shifts the rest of that copy.
    """

    __slots__ = ("period", "search", "offset", "start", "count", "copied", "window", "misses")

    def __init__(self, period: int, start: int, copied: bool) -> None:
        self.period, self.offset, self.start = period, period, start
        tolerance = min(4, 1 + period // 10)
        self.search = tuple(
            sorted(range(max(1, period - tolerance), period + tolerance + 1), key=lambda o: abs(o - period))
        )
        self.count, self.copied = 1, int(copied)
        self.window: deque[bool] = deque([True], maxlen=min(period, 24))
        self.misses = 0

    def step(self, texts: list[int], masks: list[int], s: int) -> bool:
        """Score symbol s; False once most of the last period (at most 24 symbols) missed."""
        back = s - self.offset
        before = back - self.offset if back >= self.offset else back  # still has what the last copy alone changed
        copied = texts[s] == texts[back] or texts[s] == texts[before]
        hit = copied or masks[s] == masks[back] or masks[s] == masks[before]
        if not hit:
            for offset in self.search:
                if offset <= s and (texts[s] == texts[s - offset] or masks[s] == masks[s - offset]):
                    self.offset, hit, copied = offset, True, texts[s] == texts[s - offset]
                    break
        if len(self.window) == self.window.maxlen and not self.window[0]:
            self.misses -= 1
        self.window.append(hit)
        self.misses += not hit
        self.count += 1
        self.copied += copied
        return 2 * self.misses <= self.window.maxlen


class _NearCycles:
    """Approximate cycles over a symbol stream: one symbol per token, except that a number is one symbol.

    Each symbol is read as the 4-gram it ends, spelled two ways: as text (a number's digits; a list counter,
    a number that begins a line, as one mark) and masked (every number the same mark). A number's symbol is
    made when the number ends.
    """

    def __init__(self, ids: list[int], limits: LoopThresholds, table: _TokenTable | None) -> None:
        self.ids, self.limits, self.table = ids, limits, table
        self.units: list[object] = []  # each symbol's text spelling
        self.masked_units: list[object] = []
        self.texts: list[int] = []  # hash of the text 4-gram ending at each symbol
        self.masks: list[int] = []
        self.positions: list[int] = []  # the token index where each symbol begins
        self.words: list[int] = [0]  # words[s]: word tokens among the first s symbols
        self.number: list[int] = []  # the digits of the number being written
        self.line_start = True
        self.last_text: dict[int, int] = {}  # gram hash -> the symbol it last ended at
        self.last_masked: dict[int, int] = {}
        self.candidates: list[_Candidate] = []

    def push(self) -> LoopHit | None:
        i, token, table = len(self.ids) - 1, self.ids[-1], self.table
        if table is None:
            self._symbol(token, token, i, 1)
            return self._best(i)
        if table.digit[token]:
            self.number.append(token)
            return self._best(i)
        if self.number:
            text = _COUNTER if self.line_start and table.counter_mark[token] else tuple(self.number)
            self._symbol(text, _NUMBER, i - len(self.number), 0)
            self.number = []
            self.line_start = False
        self._symbol(token, token, i, table.word[token])
        self.line_start = bool(table.newline[token]) or (self.line_start and bool(table.blank[token]))
        return self._best(i)

    def _symbol(self, unit: object, masked_unit: object, position: int, word: int) -> None:
        s = len(self.units)
        self.units.append(unit)
        self.masked_units.append(masked_unit)
        self.positions.append(position)
        self.words.append(self.words[-1] + word)
        text = hash(tuple(self.units[-_NEAR_GRAM:]))
        mask = hash(tuple(self.masked_units[-_NEAR_GRAM:]))
        self.texts.append(text)
        self.masks.append(mask)
        if s < _NEAR_GRAM - 1:
            return
        self.candidates = [c for c in self.candidates if c.step(self.texts, self.masks, s)]
        text_seen, masked_seen = self.last_text.get(text), self.last_masked.get(mask)
        self.last_text[text], self.last_masked[mask] = s, s
        for seen in (masked_seen, text_seen):
            if seen is None or not 2 <= s - seen <= self.limits.max_period or len(self.candidates) >= _CANDIDATES:
                continue
            gap = s - seen
            if not any(gap in c.search for c in self.candidates):
                self.candidates.append(_Candidate(gap, s, self.texts[s - gap] == text))

    def _best(self, i: int) -> LoopHit | None:
        best, needed = None, self.limits.near_min_copies - 1
        for c in self.candidates:
            if c.count < needed * c.period - _NEAR_GRAM:  # too few copies yet (the first copy is not counted)
                continue
            hit = self._fires(c, i)
            if hit is not None and (best is None or (hit.onset, hit.period) < (best.onset, best.period)):
                best = hit
        return best

    def _fires(self, c: _Candidate, i: int) -> LoopHit | None:
        limits, s = self.limits, len(self.units) - 1
        if not c.window[-1] or c.copied < limits.near_min_copied * c.count:
            return None
        period = i - self.positions[s - c.period]
        if period <= limits.short_cycle and c.copied < limits.short_min_copied * c.count:
            return None
        first = max(0, c.start - (_NEAR_GRAM - 1) - c.period)
        if self.words[first + c.period] - self.words[first] < limits.min_words:
            return None
        onset = self.positions[first]
        if (s - first + 1) < limits.near_min_copies * c.period or i - onset + 1 < limits.min_span:
            return None
        return LoopHit(onset, period, "degenerate" if period <= limits.degenerate_period else "near-verbatim")


class LoopDetector:
    """Push each generated token; a LoopHit comes back once, on the token where a loop is first certain."""

    def __init__(self, tokenizer: Tokenizer | None = None, **thresholds: float) -> None:
        self.limits = LoopThresholds(**thresholds)
        self._table = _token_table(tokenizer) if tokenizer is not None else None
        self._reset()

    def _reset(self) -> None:
        self._ids: list[int] = []
        self._exact = _ExactCycles(self._ids, self.limits)
        self._near = _NearCycles(self._ids, self.limits, self._table)
        self._covered_end = 0  # tokens before this are in looping text already reported

    def __len__(self) -> int:
        return len(self._ids)

    def push(self, token_id: int) -> LoopHit | None:
        self._ids.append(token_id)
        hits = [hit for hit in (self._exact.push(), self._near.push()) if hit is not None]
        if not hits:
            return None
        new = [hit for hit in hits if hit.onset >= self._covered_end]
        self._covered_end = len(self._ids)
        return min(new, key=lambda hit: (hit.onset, hit.period)) if new else None

    def truncate(self, length: int) -> None:
        """Forget the tokens from index `length` on, as if they had never been pushed."""
        if length < 0:
            raise InvalidRequestError(f"cannot truncate the loop detector to {length} tokens", "length")
        if length >= len(self._ids):
            return
        kept = self._ids[:length]
        self._reset()
        for token in kept:
            self.push(token)


def find_loop(token_ids: Iterable[int], tokenizer: Tokenizer | None = None, **thresholds: float) -> LoopHit | None:
    """The first loop in a saved trace, as the streaming detector would have reported it."""
    detector = LoopDetector(tokenizer, **thresholds)
    for token in token_ids:
        hit = detector.push(token)
        if hit is not None:
            return hit
    return None
