"""A bare `\\boxed{…}` (outside `$…$` or `\\(…\\)`, as math answers end) is drawn as latex2mathml draws the same
TeX between delimiters; unbalanced braces stay text, and many unclosed boxes stay fast."""

from __future__ import annotations

import time

from latex2mathml.converter import convert

from qwq.server.markdown import render_markdown


def test_a_bare_box_is_the_math_it_holds():
    for tex in (r"\boxed{42}", r"\boxed{\frac{1}{2}}", r"\boxed{\{1, 2\}}"):
        bare = render_markdown(f"The answer is {tex}.")
        assert bare == render_markdown(f"The answer is \\({tex}\\)."), bare
        assert "<menclose" in bare and convert(tex).count("<mn>") == bare.count("<mn>")


def test_unbalanced_boxes_stay_text_and_cost_linear_time():
    assert render_markdown(r"so \boxed{x and more").strip() == r"<p>so \boxed{x and more</p>"
    started = time.perf_counter()
    render_markdown(r"\boxed{" * 20_000)
    assert time.perf_counter() - started < 5
