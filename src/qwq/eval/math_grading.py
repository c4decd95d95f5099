"""Maths answers: find the final answer a reply commits to, and judge it against the gold.

Extraction looks only for a commitment (`\\boxed{}`, a **Final Answer** section, "the answer is ...", a
concluding formula at the very end), never for the last number, so a reply cut off mid-thought has no answer.
Grading asks math-verify first (gold parsed first, as it expects), then a normaliser of ours for the forms it
misses: units and currency words, text answers, trailing full stops, vectors written as tuples, repeating
decimals, and base subscripts that disagree.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from fractions import Fraction

logger = logging.getLogger(__name__)

# math-verify's own limit, on the main thread, where its SIGALRM timer works; elsewhere it has none, and
# `_affordable` keeps out the inputs that could run for ever.
_TIMEOUT_S = 5
_MAX_CHARS = 300
_LOOKBACK = 300  # how far back from "the answer is" a hedge ("if", "maybe") is looked for
_MAX_SENTENCE = 2000  # how far after "the answer is" its sentence may run (keeps a long reply linear)

# ---------------------------------------------------------------------------------------------------------------
# Extraction


_BRACE_TOKEN = re.compile(r"\\.|[{}]", re.DOTALL)  # an escape (\\{, \\\\) counts as no brace
_BOX = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])\s*")
_BARE_TOKEN = re.compile(r"[^\s$\\{}]+")
_BOX_GAP = re.compile(r"(?:\s|[,;&]|\$|\\[\[\]()]|\\q?quad|\\text\{\s*(?:and|or|,)?\s*\}|\band\b|\bor\b)*")
_HEADING = re.compile(r"(?im)^[ \t>#*]*final\s+answer[ \t*:]*$")
_ANSWER_LINE = re.compile(r"(?im)^[ \t>#*]*(?:the\s+)?(?:final\s+)?answer[ \t*]*[:：][ \t*]*")
_ANSWER_PHRASE = re.compile(
    r"(?i)\b(?:final\s+)?answer\s+(?:is|would\s+be|should\s+be|must\s+be|will\s+be)\b[ \t]*[:：]?[ \t*]*"
)
_HEDGE = re.compile(r"(?i)\b(?:if|whether|maybe|perhaps|suppose|supposing|assuming|might|could|unless|not\s+sure)\b")
_SENTENCE_END = re.compile(r"\n|[?!;]|\.(?=\s|$)")
_CONCLUSION = re.compile(r"(?i)\b(?:therefore|thus|hence|so|answer|final|conclusion|result|total)\b")
_NON_ANSWER_START = re.compile(
    r"(?i)^(?:that|to|in|not|same|correct|wrong|incorrect|right|clearly|obviously|simply|just|yes|no|still|also|"
    r"probably|likely|given|as|when|because|since|this|it|what|which|how|unclear|unknown|something|different)\b"
)
# where a stated answer stops and the sentence goes on: "5, which is ...", "5 because ..."
_CLAUSE = re.compile(r",\s+(?=[a-z]{2,}\b)(?!and\b|or\b)|\s+(?=(?:because|since|as|which|so|when|where|but|for)\b)")
_MATH_SPAN = re.compile(r"\$\$(.+?)\$\$|\\\[(.+?)\\\]|\\\((.+?)\\\)|\$([^$]+?)\$", re.DOTALL)


def _closing_brace(text: str, start: int) -> int | None:
    """Index of the `}` that closes the `{` at `start` (escaped braces and `\\\\` skipped), None if it is not
    closed within `_MAX_SENTENCE` characters (no answer is that long; a cut-off box must not cost a scan of the
    whole reply)."""
    depth = 0
    for token in _BRACE_TOKEN.finditer(text, start, start + _MAX_SENTENCE):
        depth += {"{": 1, "}": -1}.get(token.group(), 0)
        if depth == 0:
            return token.start()
    return None


def boxed_spans(text: str) -> list[tuple[int, int, str]]:
    """Every complete `\\boxed{...}` / `\\fbox{...}` (nested braces; also the brace-less `\\boxed 5`) as
    (start, end, content); one cut off before its closing brace is no commitment and is left out."""
    spans = []
    for match in _BOX.finditer(text):
        i = match.end()
        if text.startswith("{", i):
            end = _closing_brace(text, i)
            if end is not None and text[i + 1 : end].strip():
                spans.append((match.start(), end + 1, text[i + 1 : end].strip()))
        elif (token := _BARE_TOKEN.match(text, i)) and (value := token.group().rstrip(".,;")):
            spans.append((match.start(), token.end(), value))
    return spans


def _last_boxed(text: str) -> tuple[int, str] | None:
    """The last boxed answer, joined with the boxes just before it when only separators lie between (a reply
    that boxes each of two solutions), as (position, answer)."""
    spans = boxed_spans(text)
    if not spans:
        return None
    group = [spans[-1]]
    for span in reversed(spans[:-1]):
        if span[1] <= group[0][0] and _BOX_GAP.fullmatch(text, span[1], group[0][0]):
            group.insert(0, span)
        elif span[1] <= group[0][0]:
            break
    values = list(dict.fromkeys(_tidy(content) for _, _, content in group))
    answer = ", ".join(value for value in values if value)
    return (group[-1][0], answer) if answer else None


def _tidy(value: str) -> str:
    """An answer without the decoration around it: bold, quotes, boxes, math delimiters, a final full stop."""
    value = value.strip().strip("*").strip()
    for _ in range(3):
        if (spans := boxed_spans(value)) and spans[0][0] == 0 and spans[0][1] == len(value):
            value = spans[0][2]
        if (math := _MATH_SPAN.fullmatch(value)) is not None:
            value = next(group for group in math.groups() if group is not None).strip()
    return value.strip().strip("\"'`").rstrip(".,;:").strip()


def _value_at(text: str, start: int) -> str | None:
    """The answer stated from `start` to the end of its sentence; None for a question, prose, or nothing."""
    rest = text[start : start + _MAX_SENTENCE]
    if rest.startswith(("\\boxed", "\\fbox")):
        return None  # the box itself is a candidate of its own
    math = _MATH_SPAN.match(rest)
    if math is not None:
        return _tidy(math.group()) or None
    masked = _MATH_SPAN.sub(lambda m: "M" * len(m.group()), rest)  # sentence ends are never inside maths
    end = _SENTENCE_END.search(masked)
    if end is not None and end.group() == "?":
        return None
    sentence = rest[: end.start() if end else len(rest)]
    cut = _CLAUSE.search(sentence)
    value = _tidy(sentence[: cut.start()] if cut else sentence)
    value = re.sub(r"(?i)^(?:an?|the)\s+", "", value)
    if not value or _NON_ANSWER_START.match(value):
        return None
    if not re.search(r"[\d\\$^=]", value) and len(value.split()) > 3:
        return None
    return value


def _hedged(text: str, start: int) -> bool:
    """Whether the sentence holding the answer phrase at `start` makes it conditional ("if the answer is ...")."""
    window = max(0, start - _LOOKBACK)
    sentence_start = max(window - 1, *(text.rfind(mark, window, start) for mark in (". ", "\n", "? ", "! ")))
    return bool(_HEDGE.search(text, sentence_start + 1, start))


def _section_value(text: str, start: int) -> tuple[int, str] | None:
    """The answer under a heading that stands on its own line: its first block, math or text."""
    body = text[start : start + _MAX_SENTENCE]
    stripped = body.lstrip()
    if not stripped:
        return None
    at = start + len(body) - len(stripped)
    line = stripped.split("\n", 1)[0]
    if phrase := _ANSWER_PHRASE.search(line):
        value = _value_at(text, at + phrase.end())
    elif len(maths := _MATH_SPAN.findall(line)) == 1:  # "The area is \( 24 \) square units."
        value = _tidy(next(group for group in maths[0] if group)) or None
    else:
        value = _value_at(text, at)
    return (at, value) if value else None


def _candidates(text: str) -> list[tuple[int, str]]:
    """Every answer the text commits to, as (position, answer)."""
    found = []
    if (boxed := _last_boxed(text)) is not None:
        found.append(boxed)
    for heading in _HEADING.finditer(text):
        if (section := _section_value(text, heading.end())) is not None:
            found.append(section)
    for line in _ANSWER_LINE.finditer(text):
        if text[line.end() : line.end() + 1] in ("", "\n"):
            value = _section_value(text, line.end())
        elif (stated := _value_at(text, line.end())) is not None:
            value = (line.end(), stated)
        else:
            value = None
        if value is not None:
            found.append(value)
    for phrase in _ANSWER_PHRASE.finditer(text):
        if not _hedged(text, phrase.start()) and (stated := _value_at(text, phrase.end())) is not None:
            found.append((phrase.end(), stated))
    return found


def _trailing_formula(text: str) -> str | None:
    """A formula that ends the reply and concludes it ("So the area is $12\\pi$."): its right-hand side."""
    text = text.rstrip().rstrip(".").rstrip()
    spans = list(_MATH_SPAN.finditer(text))
    if not spans or spans[-1].end() != len(text):
        return None
    last = spans[-1]
    lead = text[: last.start()].rstrip().rsplit("\n", 1)[-1]  # its own line's start, or the line before
    if not _CONCLUSION.search(lead):
        return None
    formula = _tidy(last.group())
    return formula.rsplit("=", 1)[-1].strip() or None


def extract_math_answer(text: str) -> str | None:
    """The final answer a reply commits to, as written (LaTeX or text), or None when it commits to none.

    The latest commitment wins (a boxed answer, a **Final Answer** section, "the answer is X", "Answer: X");
    a formula that ends the reply counts only when nothing else does. After `</think>` the answer part is
    searched first."""
    parts = text.rsplit("</think>", 1)
    for part in [parts[1], text] if len(parts) == 2 else [text]:
        if found := _candidates(part):
            return max(found, key=lambda candidate: candidate[0])[1]
    return _trailing_formula(text)


# ---------------------------------------------------------------------------------------------------------------
# Grading


class _QuietTimeoutNotice(logging.Filter):
    """Drops math-verify's "Timeout is disabled" notice: off the main thread we disable its timer on purpose and
    bound the work ourselves (`_affordable`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout is disabled")


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_QuietTimeoutNotice())

_TEXT_COMMAND = re.compile(r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mathit|mbox|operatorname)\s*\{([^{}]*)\}")
_SPACING = re.compile(r"(?<!\\)\\(?:left|right|displaystyle|[!,;:> ])|~")
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\circ|\\degree|°")
_UNIT = re.compile(
    r"(?:(?<=[\d}.])|(?<=\d)\s+|(?<=\s))\s*(?:(?:square|sq\.?|cubic)\s+)?(?:units?|cm|mm|km|meters?|metres?|"
    r"centimeters?|millimeters?|kilometers?|inches|inch|feet|foot|ft|yards?|miles?|mph|hours?|minutes?|seconds?|"
    r"days?|weeks?|months?|years?|dollars?|cents?|degrees?|percent|ways|points?|people|students?|"
    r"(?<=\s)(?:m|s|g|kg|in))(?:\s*\^\s*\{?[23]\}?|[²³])?\s*$"
)
_LHS = re.compile(r"^(?:[A-Za-z](?:_\{?\w+\}?)?|[A-Za-z]\([A-Za-z]\))\s*(?:=|\\in)\s*(?=\S)")
_BASE = re.compile(r"^([0-9A-Za-z]+)_\{?\(?(\d+)\)?\}?$")
_DECIMAL = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)")
_FRACTION = re.compile(r"([-+]?)\\frac\{([-+]?\d+)\}\{([-+]?\d+)\}")
_MIXED = re.compile(r"([-+]?\d+)\s*\\frac\{(\d+)\}\{(\d+)\}")
_REPEATING = re.compile(r"([-+]?)(\d*)\.(\d*)\\overline\{(\d+)\}")
_MATRIX = re.compile(
    r"\\begin\{[pbvB]?matrix\}(.*?)\\end\{[pbvB]?matrix\}|\\begin\{array\}\{[^}]*\}(.*?)\\end\{array\}", re.S
)
_WORD_GOLD = re.compile(r"[A-Za-z]+(?:[ '-][A-Za-z]+)*")


def _affordable(text: str) -> bool:
    """Whether sympy can settle `text` quickly: short, and no power tower, huge exponent or big factorial (their
    evaluation runs in C, where no timer can stop it)."""
    return (
        len(text) <= _MAX_CHARS
        and not re.search(r"\^\s*\{[^{}]*\^|\^\s*\(?\d+\)?\s*\^|\*\*.*\*\*", text)
        and not re.search(r"\^\s*\{?\s*\d{5,}", text)
        and not re.search(r"(?:\d{4,}|[)}])\s*!", text)
    )


def _verify(gold: str, prediction: str) -> bool:
    """math-verify's verdict (gold parsed first, both wrapped in `$...$`, an interval comparable with an
    inequality); False on any error or timeout."""
    gold, prediction = _tidy(gold), _tidy(prediction)
    if not gold or not prediction or not (_affordable(gold) and _affordable(prediction)):
        return False
    from math_verify import parse, verify  # sympy and antlr cost half a second to import
    from math_verify.errors import TimeoutException

    limit = _TIMEOUT_S if threading.current_thread() is threading.main_thread() else None
    try:
        parsed_gold = parse(f"${gold}$", parsing_timeout=limit)
        parsed = parse(f"${prediction}$", parsing_timeout=limit)
        if not (parsed_gold and parsed):
            return False
        # an interval may be answered as the inequality it stands for: (2, \infty) and x > 2
        return bool(verify(parsed_gold, parsed, allow_set_relation_comp=True, timeout_seconds=limit))
    except (Exception, TimeoutException):
        logger.debug("math-verify failed on %r vs %r", gold, prediction, exc_info=True)
        return False


def _canonical(text: str) -> str:
    """A plain form of an answer: no delimiters, spacing commands, text wrappers, units, degree or percent
    signs, thousands separators, or `x =` in front; `\\dfrac` is `\\frac` and brace-less arguments are braced."""
    text = _tidy(text)
    text = _SPACING.sub(" ", text).replace("{,}", ",")
    for _ in range(3):
        text = _TEXT_COMMAND.sub(r"\1", text)
    text = re.sub(r"\\[dt]frac", r"\\frac", text)
    text = re.sub(r"\\frac\s*(\d)\s*(\d)", r"\\frac{\1}{\2}", text)
    text = re.sub(r"\\frac\s*\{([^{}]*)\}\s*(\d)", r"\\frac{\1}{\2}", text)
    text = re.sub(r"\\frac\s*(\d)\s*\{", r"\\frac{\1}{", text)
    text = re.sub(r"\\sqrt\s*(\d+|[A-Za-z])", r"\\sqrt{\1}", text)
    text = _DEGREES.sub("", text)
    text = re.sub(r"\\?\$|\\?%", "", text)
    text = re.sub(r"_\{\(?(\w+)\)?\}", r"_\1", text)
    text = " ".join(text.split()).rstrip(".").strip()
    text = _LHS.sub("", text)
    for _ in range(2):
        text = _UNIT.sub("", text).strip()
    if re.fullmatch(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?", text.replace(" ", "")):
        text = text.replace(",", "").replace(" ", "")
    return text.lstrip("+").strip()


def _key(text: str) -> str:
    """`text` for string comparison: spaces kept only between letters (`\\cot x`)."""
    return re.sub(r"(?<![A-Za-z])\s+|\s+(?![A-Za-z])", "", text)


def _exact(text: str) -> Fraction | None:
    """The exact value of a plain number: integer, decimal, fraction, mixed number or repeating decimal."""
    text = _key(text)
    if _DECIMAL.fullmatch(text):
        return Fraction(text)
    if match := re.fullmatch(r"([-+]?\d+)/(\d+)", text):
        return Fraction(int(match[1]), int(match[2])) if int(match[2]) else None
    if match := _FRACTION.fullmatch(text):
        value = Fraction(int(match[2]), int(match[3])) if int(match[3]) else None
        return -value if value is not None and match[1] == "-" else value
    if match := _MIXED.fullmatch(text):
        whole, numerator, denominator = (int(group) for group in match.groups())
        if not denominator:
            return None
        part = Fraction(numerator, denominator)
        return whole - part if match[1].startswith("-") else whole + part
    if match := _REPEATING.fullmatch(text):
        sign, whole, fixed, cycle = match.groups()
        value = Fraction(int(whole or 0)) + Fraction(int(fixed or 0), 10 ** len(fixed))
        value += Fraction(int(cycle), (10 ** len(cycle) - 1) * 10 ** len(fixed))
        return -value if sign == "-" else value
    return None


def _split_top(text: str) -> list[str]:
    """`text` split at the commas that are outside every bracket."""
    parts, depth, last = [], 0, 0
    i = 0
    while i < len(text):
        char = text[i]
        if char == "\\" and text[i + 1 : i + 2] in "{}":
            depth += 1 if text[i + 1] == "{" else -1
            i += 2
            continue
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[last:i].strip())
            last = i + 1
        i += 1
    parts.append(text[last:].strip())
    return parts


def _plus_minus(items: list[str]) -> list[str]:
    """Each `a \\pm b` as its two values."""
    out = []
    for item in items:
        if (sign := re.search(r"\\pm|\\mp", item)) is not None:
            left, right = item[: sign.start()].strip(), item[sign.end() :].strip()
            out += [f"{left}+{right}", f"{left}-{right}"] if left else [right, f"-{right}"]
        else:
            out.append(item)
    return out


def _shape(text: str) -> tuple[str, list]:
    """How an answer is built: ("matrix", rows), ("tuple", entries, brackets), ("set", members),
    ("union", intervals) or ("atom", [text])."""
    if (matrix := _MATRIX.fullmatch(text)) is not None:
        body = matrix[1] if matrix[1] is not None else matrix[2]
        rows = [[entry.strip() for entry in row.split("&")] for row in re.split(r"\\\\", body) if row.strip()]
        if all(len(row) == 1 for row in rows):
            return "tuple", [row[0] for row in rows], "()"
        return ("tuple", rows[0], "()") if len(rows) == 1 else ("matrix", rows)
    if len(unions := [part.strip() for part in re.split(r"\\cup", text)]) > 1:
        return "union", unions
    if text.startswith("\\{") and text.endswith("\\}"):
        return "set", _plus_minus(_split_top(text[2:-2]))
    if text[:1] in "([" and text[-1:] in ")]" and _closing_bracket_is_last(text):
        return "tuple", _split_top(text[1:-1]), text[0] + text[-1]
    items = _plus_minus(_split_top(text))
    return ("set", items) if len(items) > 1 else ("atom", items)


def _closing_bracket_is_last(text: str) -> bool:
    """Whether the bracket that opens `text` closes only at its end, as in `(1, 2)` and not `(a+5)(b+2)`."""
    depth = 0
    for i, char in enumerate(text):
        depth += char in "([{"
        depth -= char in ")]}"
        if depth == 0:
            return i == len(text) - 1
    return False


def _same_atom(gold: str, prediction: str) -> bool:
    """Whether two single answers (no list, tuple or matrix) are equal: as plain text, as exact numbers, or
    by math-verify on their plain forms."""
    gold, prediction = _canonical(gold), _canonical(prediction)
    if not prediction:
        return False
    if _key(gold) == _key(prediction):
        return True
    exact_gold, exact_prediction = _exact(gold), _exact(prediction)
    if exact_gold is not None and exact_prediction is not None:
        return exact_gold == exact_prediction
    return _verify(gold, prediction)


def _matched_once(gold: list[str], prediction: list[str], same: Callable[[str, str], bool]) -> bool:
    """Whether two unordered lists hold equal members, each matched once."""
    left = list(prediction)
    for member in gold:
        match = next((i for i, other in enumerate(left) if same(member, other)), None)
        if match is None:
            return False
        left.pop(match)
    return not left


def _same_structure(gold: str, prediction: str) -> bool:
    """Our own comparison, member by member, of answers math-verify could not match."""
    gold_shape, prediction_shape = _shape(_canonical(gold)), _shape(_canonical(prediction))
    kind = gold_shape[0]
    if kind != prediction_shape[0]:
        return False
    if kind == "atom":
        return _same_atom(gold_shape[1][0], prediction_shape[1][0])
    if kind == "tuple":
        return (
            gold_shape[2] == prediction_shape[2]
            and len(gold_shape[1]) == len(prediction_shape[1])
            and all(map(_same_structure, gold_shape[1], prediction_shape[1]))
        )
    if kind == "matrix":
        return [len(row) for row in gold_shape[1]] == [len(row) for row in prediction_shape[1]] and all(
            _same_atom(g, p)
            for g_row, p_row in zip(gold_shape[1], prediction_shape[1], strict=True)
            for g, p in zip(g_row, p_row, strict=True)
        )
    if kind == "union":
        return _matched_once(gold_shape[1], prediction_shape[1], _same_structure)
    return _matched_once(gold_shape[1], prediction_shape[1], _same_atom)


def _text_key(text: str) -> str:
    """A word answer for comparison: lower case, no wrappers, parentheses, articles or final full stop."""
    text = _canonical(text).lower().strip("() ")
    return re.sub(r"^(?:an?|the)\s+", "", text)


def _is_text_answer(gold: str) -> bool:
    """Whether the gold is words (a name, "odd", "(C)") rather than maths, so it is compared as text: sympy
    would read `east` as the product e*a*s*t, equal to `seat`."""
    plain = _canonical(gold)
    if _TEXT_COMMAND.search(gold):
        return bool(re.fullmatch(r"[A-Za-z' ().-]+", plain))
    return bool(_WORD_GOLD.fullmatch(plain)) and max(len(word) for word in re.split(r"[ '-]", plain)) >= 3


def _bases_differ(gold: str, prediction: str) -> bool:
    """Whether both answers carry a base subscript and the bases differ (math-verify drops subscripts)."""
    gold_base, prediction_base = _BASE.match(_canonical(gold)), _BASE.match(_canonical(prediction))
    return bool(gold_base and prediction_base and gold_base[2] != prediction_base[2])


def _set_against_tuple(gold: str, prediction: str) -> bool:
    """Whether one answer is a braced set and the other a bracketed tuple or interval (math-verify equates
    `(1,2)` with `\\{1,2\\}`)."""
    gold, prediction = _canonical(gold), _canonical(prediction)
    braced = {gold.startswith("\\{"), prediction.startswith("\\{")}
    bracketed = {gold[:1] in "([", prediction[:1] in "(["}
    return braced == bracketed == {True, False}


def grade_math(gold: str, prediction: str | None) -> bool:
    """Whether `prediction` (an extracted answer, or None for none) equals the gold answer; never raises."""
    try:
        if prediction is not None and (boxed := _last_boxed(prediction)) is not None:
            prediction = boxed[1]  # a reply passed whole is graded by the answer it boxes
        if prediction is None or not _tidy(prediction) or len(prediction) > _MAX_SENTENCE:
            return False
        if _is_text_answer(gold):
            return _text_key(gold) == _text_key(prediction)
        if _bases_differ(gold, prediction) or _set_against_tuple(gold, prediction):
            return False
        return _verify(gold, prediction) or _same_structure(gold, prediction)
    except Exception:  # a grader fault must cost one item, not the run
        logger.warning("grading failed on %r vs %r", gold, prediction, exc_info=True)
        return False
