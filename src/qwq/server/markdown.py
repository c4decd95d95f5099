"""Markdown with TeX math turned into safe HTML for the web chat page.

Rendering happens on the server so the page needs no script libraries (nothing to fetch from a CDN, nothing to
vendor): markdown-it-py parses CommonMark plus tables and strikethrough, math between `$…$`, `$$…$$`, `\\(…\\)`
and `\\[…\\]` becomes MathML (which browsers draw natively), and nh3 keeps only a fixed set of tags and
attributes, since the model's text must never become script in the page."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from html import escape

import nh3
from latex2mathml.converter import convert as latex_to_mathml
from markdown_it import MarkdownIt
from markdown_it.rules_inline import StateInline
from markdown_it.token import Token
from mdit_py_plugins.dollarmath import dollarmath_plugin

_MATHML_TAGS = {
    "math", "mrow", "mi", "mo", "mn", "ms", "mtext", "mspace", "msup", "msub", "msubsup", "mfrac", "msqrt",
    "mroot", "mover", "munder", "munderover", "mtable", "mtr", "mtd", "menclose", "mstyle", "mpadded",
    "mphantom", "mmultiscripts", "mprescripts", "none", "merror",
}  # fmt: skip
_MATHML_ATTRIBUTES = {
    "display", "mathvariant", "notation", "stretchy", "fence", "form", "separator", "lspace", "rspace",
    "columnalign", "rowspacing", "columnspacing", "displaystyle", "scriptlevel", "mathcolor", "accent",
    "accentunder", "minsize", "maxsize", "movablelimits", "symmetric", "linethickness", "width", "height",
    "depth", "rowlines", "columnlines", "frame",
}  # fmt: skip
_TAGS = nh3.ALLOWED_TAGS | _MATHML_TAGS
_ATTRIBUTES = {
    **nh3.ALLOWED_ATTRIBUTES,
    "code": {"class"},
    "span": {"class"},
    "div": {"class"},
    **dict.fromkeys(_MATHML_TAGS, _MATHML_ATTRIBUTES),
}
# math token types: dollarmath's, and ours for \(…\) and \[…\]; the value says whether it is display math
_MATH_TOKENS = {"math_inline": False, "math_inline_double": True, "math_block": True}
_BRACKETS = {"\\(": ("\\)", "math_inline"), "\\[": ("\\]", "math_inline_double")}


def _math_html(tex: str, display: bool) -> str:
    """MathML for `tex`; its source as code where the converter cannot read it."""
    try:
        return latex_to_mathml(tex.strip(), display="block" if display else "inline")
    except Exception:  # latex2mathml raises many kinds on malformed TeX; the source is the honest fallback
        return f'<code class="tex">{escape(tex)}</code>'


def _render_math(self, tokens: Sequence[Token], index: int, options, env) -> str:
    token = tokens[index]
    html = _math_html(token.content, _MATH_TOKENS[token.type])
    return f'<div class="math">{html}</div>\n' if token.type == "math_block" else html


def _bracket_math(state: StateInline, silent: bool) -> bool:
    """Inline rule for `\\(…\\)` and `\\[…\\]` (LaTeX's delimiters, which QwQ writes most), also when the
    display form sits inside a list item or spans lines of a paragraph."""
    opening = state.src[state.pos : state.pos + 2]
    if opening not in _BRACKETS:
        return False
    closing, token_type = _BRACKETS[opening]
    end = _next(state, closing, state.pos + 2)
    if end < 0:
        return False
    if not silent:
        token = state.push(token_type, "math", 0)
        token.content, token.markup = state.src[state.pos + 2 : end], opening
    state.pos = end + 2
    return True


_BOXED = "\\boxed{"


def _bare_boxed(state: StateInline, silent: bool) -> bool:
    """Inline rule for a `\\boxed{…}` written outside any math delimiters (math answers end with one): drawn
    as the boxed math it is. Its braces must balance within the paragraph; otherwise it stays text."""
    if not state.src.startswith(_BOXED, state.pos):
        return False
    end = _brace_pairs(state).get(state.pos + len(_BOXED) - 1, -1)
    if end < 0 or end >= state.posMax:
        return False
    if not silent:
        token = state.push("math_inline", "math", 0)
        token.content, token.markup = state.src[state.pos : end + 1], _BOXED
    state.pos = end + 1
    return True


def _brace_pairs(state: StateInline) -> dict[int, int]:
    """Each `{` of the text and the `}` that closes it (escaped braces left out), found in one pass and kept
    per text: a text full of unclosed boxes costs linear time."""
    known = state.env.setdefault("_brace_pairs", {})
    key = id(state.src)
    if key not in known:
        pairs, opened, index, text = {}, [], 0, state.src
        while index < len(text):
            character = text[index]
            if character == "\\":
                index += 1  # the next character is escaped
            elif character == "{":
                opened.append(index)
            elif character == "}" and opened:
                pairs[opened.pop()] = index
            index += 1
        known[key] = pairs
    return known[key]


def _next(state: StateInline, closing: str, start: int) -> int:
    """`state.src.find(closing, start)`, remembered per text: the first closing at or after a position is the
    same for every position up to it (and none after a failed search), so a text full of unclosed `\\(`
    costs linear time, not quadratic."""
    known = state.env.setdefault("_math_closings", {})
    key = (closing, id(state.src))
    searched_from, found = known.get(key, (None, None))
    if searched_from is not None and searched_from <= start and (found < 0 or start <= found):
        return found
    found = state.src.find(closing, start)
    known[key] = (start, found)
    return found


def _render_image(self, tokens: Sequence[Token], index: int, options, env) -> str:
    """An image from elsewhere becomes a link to it: the page loads nothing the model names (a remote image
    URL could carry what the model was made to write); `data:` images stay images."""
    token = tokens[index]
    source = token.attrGet("src") or ""
    alt = escape(token.content or source)
    if source.startswith("data:image/"):
        return f'<img src="{escape(source)}" alt="{alt}">'
    return f'<a href="{escape(source)}">{alt}</a>'


@lru_cache(maxsize=1)
def _parser() -> MarkdownIt:
    parser = MarkdownIt("commonmark", {"html": False, "breaks": True}).enable(["table", "strikethrough"])
    # "$5 and $6" stays text: no space inside the dollars, no digit right outside them
    dollarmath_plugin(parser, allow_space=False, allow_digits=False, double_inline=True, allow_labels=False)
    parser.inline.ruler.before("escape", "math_brackets", _bracket_math)
    parser.inline.ruler.before("escape", "bare_boxed", _bare_boxed)
    for token_type in _MATH_TOKENS:
        parser.add_render_rule(token_type, _render_math)
    parser.add_render_rule("image", _render_image)
    return parser


def render_markdown(text: str) -> str:
    """Safe HTML for a model's answer."""
    html = _parser().render(text)
    return nh3.clean(html, tags=_TAGS, attributes=_ATTRIBUTES, url_schemes={"http", "https", "mailto", "data"})
