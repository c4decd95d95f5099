"""Multiple-choice answers: the letter a reply commits to, its grade, and the lettered options of a question.

A letter counts only where the reply commits to it ("Answer: C", `\\boxed{C}`, "the answer is (C)", "I'll go
with C", a closing "**C**" or "C) ..." line), and the latest commitment wins, so "B... no, actually D" is D
and a reply cut off while weighing the options has no answer. A reply that names an option's text instead of
its letter gets that option's letter.
"""

from __future__ import annotations

import re

from qwq.eval.math_grading import boxed_spans

# a letter as replies write it: C, (C), **C**, $C$, \text{C} (the prompt asks for "Answer: $LETTER")
_LETTER = (
    r"(?:\*\*|\$|\\\(|\\(?:text|textbf|mathrm)\{|\s)*\(?\s*(?P<letter>[A-Z])\s*\)?"
    r"(?:\*\*|\$|\\\)|\})*(?![A-Za-z0-9])"
)
_CUES = [
    r"\banswer(?:\s+(?:is|would\s+be|should\s+be|must\s+be|will\s+be))?\s*[:：]?\s*(?:option\s+|choice\s+)?",
    r"\b(?:correct|right|best)\s+(?:answer|option|choice)\s*(?:is|would\s+be|should\s+be|must\s+be)?\s*[:：]?\s*"
    r"(?:option\s+|choice\s+)?",
    r"\b(?:choose|chose|select|pick|go\s+with|going\s+with|opt\s+for|settle\s+on|it's|it\s+is|actually)\s*,?\s+"
    r"(?:option\s+|choice\s+|answer\s+)?",
]
_CUED_LETTER = re.compile("(?:" + "|".join(_CUES) + ")" + _LETTER, re.I)
_CUED_TEXT = re.compile(r"(?i)\banswer(?:\s+is)?\s*[:：]\s*|\bthe\s+(?:correct\s+)?answer\s+is\s+")
_LETTER_IS_CORRECT = re.compile(
    r"(?:\b(?:option|choice)\s+)?\(?\b(?P<letter>[A-Z])\)?\s+is\s+(?:the\s+)?(?:correct|right)\b", re.I
)
_BOLD_LINE = re.compile(r"(?m)^[ \t>#]*\*\*\s*\(?(?P<letter>[A-Z])\)?\s*[.:)]?\s*\*\*[ \t.]*$")
_MARKER = re.compile(r"^[ \t*#>]*\(?(?P<letter>[A-Z])(?:\)|[.:])?(?:\s+|$)")
# words that may follow a committed letter; any other word makes it an article ("it is A good idea")
_AFTER_LETTER = re.compile(r"\s+(?!(?:because|since|as|which|is|so|and|with|-)\b)[a-z]")
_HEDGE = re.compile(r"(?i)\b(?:if|whether|maybe|perhaps|suppose|might|could|not|never|cannot)\b|n't\b")
_WINDOW = 500  # how far around a commitment its sentence is read (keeps a long reply linear)
_REST_OF_SENTENCE = re.compile(rf"[^.\n!?]{{0,{_WINDOW}}}(?P<end>[.\n!?]|$)")
_WRAPPER = re.compile(r"\\(?:text|textbf|mathrm|mathbf|mbox)\s*\{([^{}]*)\}")
_OPTION_LINE = re.compile(r"(?m)^[ \t]*(?:\*\*)?\(?([A-Z])(?:\)|\.|:)(?:\*\*)?[ \t]+(\S.*?)[ \t]*$")
_INLINE_OPTION = re.compile(r"\(([A-Z])\)")


def _plain(text: str) -> str:
    """`text` without LaTeX wrappers, math delimiters and spacing, lower case, for comparing option texts."""
    for _ in range(2):
        text = _WRAPPER.sub(r"\1", text)
    text = re.sub(r"\\[,;! ]|\$|\\\(|\\\)|\\\[|\\\]", " ", text).lower()
    text = re.sub(r"^(?:an?|the)\s+", "", " ".join(text.split()))
    return text.strip(" .;:*\"'")


def _option_of(value: str, options: dict[str, str] | None) -> str | None:
    """The letter of the option whose text `value` states: an exact match, else the one option named in it."""
    if not options:
        return None
    stated = _plain(value)
    if not stated:
        return None
    exact = [letter for letter, text in options.items() if _plain(text) == stated]
    if len(exact) == 1:
        return exact[0]
    named = [
        letter
        for letter, text in options.items()
        if _plain(text) and re.search(rf"(?<![\w.]){re.escape(_plain(text))}(?![\w.])", stated)
    ]
    longest = max(named, key=lambda letter: len(_plain(options[letter])), default=None)
    others = [
        letter for letter in named if letter != longest and _plain(options[letter]) not in _plain(options[longest])
    ]
    return longest if longest is not None and not others else None


def _letter_of(value: str, valid: str, options: dict[str, str] | None) -> str | None:
    """The letter a boxed or stated answer names: `C`, `(C)`, `\\text{C}`, `C) 6.0 N`, or an option's text."""
    plain = value
    for _ in range(2):
        plain = _WRAPPER.sub(r"\1", plain)
    plain = plain.strip().strip("$*").strip()
    if (single := re.fullmatch(r"\(?\s*([A-Z])\s*\)?\.?", plain)) and single[1] in valid:
        return single[1]
    if (lead := re.match(r"\(?([A-Z])[).:]\s+\S", plain)) and lead[1] in valid:
        return lead[1]
    return _option_of(plain, options)


def _hedged(text: str, start: int, end: int) -> bool:
    """Whether the clause around a commitment makes it tentative or negative: a condition or a 'not' before it,
    a '?' after it."""
    window = max(0, start - _WINDOW)
    clause_start = max(window - 1, *(text.rfind(mark, window, start) for mark in (". ", "\n", "? ", "! ", ", ", "; ")))
    if _HEDGE.search(text, clause_start + 1, start):
        return True
    after = _REST_OF_SENTENCE.match(text, end)
    return after is not None and after["end"] == "?"


def _candidates(text: str, valid: str, options: dict[str, str] | None) -> list[tuple[int, str]]:
    """Every letter the text commits to, as (position, letter)."""
    found = []
    for start, _, content in boxed_spans(text):
        if (letter := _letter_of(content, valid, options)) is not None:
            found.append((start, letter))
    for pattern in (_CUED_LETTER, _LETTER_IS_CORRECT):
        for match in pattern.finditer(text):
            letter = match["letter"]
            if letter not in valid or _AFTER_LETTER.match(text, match.end("letter")):
                continue
            if not _hedged(text, match.start(), match.end()):
                found.append((match.start("letter"), letter))
    for match in _CUED_TEXT.finditer(text):
        sentence = re.split(r"\n|(?<!\d)\.(?!\d)|[;?!]", text[match.end() : match.end() + _WINDOW], maxsplit=1)[0]
        if (letter := _option_of(sentence, options)) is not None and not _hedged(text, match.start(), match.end()):
            found.append((match.end(), letter))
    for match in _BOLD_LINE.finditer(text):
        if match["letter"] in valid:
            found.append((match.start("letter"), match["letter"]))
    if (closing := _closing_line(text, valid, options)) is not None:
        found.append(closing)
    return found


def _closing_line(text: str, valid: str, options: dict[str, str] | None) -> tuple[int, str] | None:
    """A reply's last line when it is an answer of its own: a letter ("C", "(C)", "C."), an option's text, or
    both ("C) 6.0 N"). Not when the line before is an option too: that is a reply cut off listing them."""
    lines = [line for line in text.rstrip().split("\n") if line.strip()]
    if not lines or (len(lines) > 1 and _OPTION_LINE.match(lines[-2])):
        return None
    last = lines[-1].strip().rstrip("*").strip()
    at = text.rstrip().rfind(last)
    marker = _MARKER.match(last)
    letter = marker["letter"] if marker and marker["letter"] in valid else None
    rest = last[marker.end() :] if letter else last
    if not _plain(rest):
        return (at, letter) if letter else None
    exact = [key for key, option in (options or {}).items() if _plain(option) == _plain(rest)]
    if len(exact) == 1 and letter in (None, exact[0]):
        return at, exact[0]
    return None


def extract_choice(text: str, options: dict[str, str] | None = None, letters: str = "ABCD") -> str | None:
    """The letter a reply commits to last, or None when it commits to none.

    `options` (letter -> text, as `parse_options` reads them) lets a reply that states an option's text count
    as that option's letter, and when given its letters are the valid ones; otherwise `letters` are. After
    `</think>` the answer part is searched first."""
    valid = "".join(options) if options else letters
    parts = text.rsplit("</think>", 1)
    for part in [parts[1], text] if len(parts) == 2 else [text]:
        if found := _candidates(part, valid, options):
            return max(found)[1]
    return None


def _letter(answer: str) -> str:
    """A letter answer in one form: `(c)`, `\\text{C}` and ` C.` are all `C`."""
    return _WRAPPER.sub(r"\1", answer).strip().strip("()*.$ ").upper()


def grade_choice(gold: str, prediction: str | None) -> bool:
    """Whether the predicted letter is the gold letter."""
    return prediction is not None and bool(_letter(gold)) and _letter(gold) == _letter(prediction)


def _run_from_a(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """The options lettered A, B, C, ... in order, up to the first gap."""
    options: dict[str, str] = {}
    for letter, option in pairs:
        if letter != chr(ord("A") + len(options)):
            if options:
                break
            continue
        options[letter] = option.strip()
    return options if len(options) >= 2 else {}


def parse_options(question: str) -> dict[str, str]:
    """The lettered options of a question: one per line ("(A) ...", "A. ...", "A) ...", "A: ..."), or inline
    as "(A) ... (B) ..." (the AMC layout); {} when it has none."""
    if options := _run_from_a(_OPTION_LINE.findall(question)):
        return options
    markers = list(_INLINE_OPTION.finditer(question))
    pairs = []
    for i, marker in enumerate(markers):
        end = markers[i + 1].start() if i + 1 < len(markers) else len(question)
        option = re.sub(r"\\q?quad|\\textbf\{|\\mathrm\{|[{}$]", " ", question[marker.end() : end])
        pairs.append((marker[1], " ".join(option.split())))
    return _run_from_a(pairs)
