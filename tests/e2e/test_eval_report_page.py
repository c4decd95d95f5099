"""The eval report's HTML page in headless Chromium (Debian's package, driven by Playwright): it renders from
the file alone (every request but the page itself is refused), its tables hold the accuracy beside the
published number, and its embedded figures decode (naturalWidth > 0). The run behind it is a fake one, so
the test needs no model."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator, Sequence

import pytest
from playwright.sync_api import Route, sync_playwright

from qwq.eval import report as report_module
from qwq.eval.backends import Job, Reply
from qwq.eval.benchmarks.registry import Dataset
from qwq.eval.runner import RunSettings, run_eval
from qwq.eval.types import Item, Verdict


class _Grader:
    def grade(self, item: Item, text: str) -> Verdict:
        prediction = text.split()[-1] if text.split() else None
        return Verdict(prediction == item.answer, prediction)


class _Backend:
    """Right on even items, thinking longer on later ones; every third reply cut off."""

    def identity(self) -> dict:
        return {"backend": "fake", "model": "fake"}

    @property
    def tokenizer(self):
        return None

    def run(self, jobs: Sequence[Job]) -> Iterator[tuple[int, Reply]]:
        for index, job in enumerate(jobs):
            gold = int(re.search(r"gold=(\d+)", job.messages[-1]["content"]).group(1))
            answer = f"so it is {gold if gold % 2 == 0 else gold + 1}"
            finish = "length" if index % 3 == 2 else "stop"
            yield index, Reply("hmm " * gold + answer, "hmm " * gold, answer, finish, 20, 10 * gold, 5, [7] * 5)


@pytest.fixture(scope="module")
def report_file(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    items = [
        Item("math500", f"q{i}", "math", f"Solve gold={i}", str(i), None, {"level": str(1 + i % 5)}) for i in range(20)
    ]
    dataset = Dataset("math500", "MATH-500", "math", items, "memory", published=90.6)
    run_eval(dataset, _Backend(), RunSettings(temperature=0.7), out, samples=2, grader=_Grader())
    original = report_module._equivalence
    report_module._equivalence = lambda task: str.__eq__
    try:
        return report_module.write_report(out).html
    finally:
        report_module._equivalence = original


def test_the_report_page_renders_offline_with_its_figures(report_file, tmp_path):
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium package is missing (scripts/test installs it with apt-get)"
    outside: list[str] = []

    def only_the_page(route: Route) -> None:
        if route.request.url == report_file.as_uri():
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium)
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.route("**/*", only_the_page)
        page.goto(report_file.as_uri())
        page.wait_for_load_state("load")
        widths = page.eval_on_selector_all("img", "images => images.map(i => i.complete ? i.naturalWidth : 0)")
        accuracy = page.inner_text("table.accuracy")
        levels = page.inner_text("table.by")
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()
    assert outside == []
    assert len(widths) == 2 and all(w > 0 for w in widths)
    assert "QwQ-32B-Preview (published)" in accuracy and "90.6%" in accuracy and "MATH-500" in accuracy
    assert "accuracy [95% CI]" in levels
    assert (tmp_path / "report.png").stat().st_size > 10_000
