"""The web page's habits, in headless Chromium (Debian's package, driven by Playwright), on a server of two tiny
random checkpoints (they load in a moment; their replies are noise, which is all these tests need): a model
picker filled from /api/tags whose choice goes into the request, conversations kept in the browser across a
reload and reopened from the picker, and a bare `\\boxed{...}` in an answer drawn as boxed math."""

from __future__ import annotations

import json
import shutil

import pytest
from playwright.sync_api import Browser, Page, Route, expect, sync_playwright

from cli_process import live_server
from tiny_checkpoints import write_gguf

MODELS = ("tiny-first", "tiny-second")
TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("page-home")
    for seed, name in enumerate(MODELS):
        write_gguf(home / f"{name}.gguf", context=512, seed=seed)
    files = [str(home / f"{name}.gguf") for name in MODELS]
    with live_server(*files, "--ctx", "512", "--max-loaded", "2", home=home) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium package is missing (scripts/test installs it with apt-get)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser, server: str):
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{server}/")
    expect(page.locator("#model-name")).to_have_text(MODELS[0])
    yield page
    context.close()
    assert errors == []


def _send(page: Page, text: str) -> None:
    replies = page.locator("article.assistant")
    count = replies.count()
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")
    expect(replies.nth(count)).not_to_have_attribute("data-state", "streaming")


def _limit_tokens(page: Page) -> None:
    page.click("#toggle-settings")
    page.fill("#max-tokens", "4")
    page.dispatch_event("#max-tokens", "change")


def test_the_model_picker_lists_the_served_models_and_its_choice_is_used(page: Page):
    expect(page.locator("#model-picker option")).to_have_text(list(MODELS))
    _limit_tokens(page)
    page.select_option("#model-picker", MODELS[1])
    expect(page.locator("#model-name")).to_have_text(MODELS[1])
    with page.expect_request("**/v1/chat/completions") as sent:
        _send(page, "hello")
    assert sent.value.post_data_json["model"] == MODELS[1]
    page.reload()
    expect(page.locator("#model-name")).to_have_text(MODELS[1])  # the choice is kept in this browser


def test_conversations_survive_a_reload_and_reopen_from_the_picker(page: Page):
    _limit_tokens(page)
    _send(page, "first question")
    _send(page, "second question")
    page.reload()
    expect(page.locator("article.user")).to_have_text(["first question", "second question"])
    expect(page.locator("article.assistant")).to_have_count(2)
    with page.expect_request("**/v1/chat/completions") as sent:
        _send(page, "third question")
    history = [m["content"] for m in sent.value.post_data_json["messages"] if m["role"] == "user"]
    assert history == ["first question", "second question", "third question"]  # it goes on from the kept one
    page.click("#new-chat")
    expect(page.locator("article")).to_have_count(0)
    _send(page, "another topic")
    options = page.locator("#conversation-picker option")
    expect(options).to_have_text(["New conversation", "another topic", "first question"])
    page.select_option("#conversation-picker", label="first question")
    expect(page.locator("article.user")).to_have_text(["first question", "second question", "third question"])


def test_a_bare_boxed_answer_is_drawn_as_boxed_math(page: Page):
    """The reply is canned here (the route answers for the server): the page's drawing is what is tested,
    through the server's real /ui/render."""
    chunks = [{"choices": [{"index": 0, "delta": {"content": "The answer is \\boxed{42}."}, "finish_reason": None}]}]
    chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    body = "".join(f"data: {json.dumps(chunk)}\n\n" for chunk in chunks) + "data: [DONE]\n\n"

    def canned(route: Route) -> None:
        route.fulfill(status=200, headers={"Content-Type": "text/event-stream"}, body=body)

    page.route("**/v1/chat/completions", canned)
    _send(page, "What is 6 times 7?")
    boxed = page.locator("article.assistant .answer math menclose[notation='box']")
    expect(boxed).to_have_count(1)
    expect(boxed).to_have_text("42")
    expect(page.locator("article.assistant .answer")).not_to_contain_text("\\boxed")
