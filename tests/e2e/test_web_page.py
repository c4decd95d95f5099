"""The web chat page at `/`, in headless Chromium (Debian's package, driven by Playwright): it asks for the API
key, streams a reply with the reasoning in a folding block apart from the answer, draws the answer's markdown and
math, sends the controls' values, and its stop button ends a reply and frees the server's slot.

The server is the package's web one (tests/e2e/conftest.py: `--reasoning-format qwq-preview`, a bearer key) and
the system prompt asks for a `**Final Answer**` heading, so the small test model's replies split into reasoning
and answer as QwQ-32B-Preview's do."""

from __future__ import annotations

import re
import shutil
import time

import httpx
import pytest
from playwright.sync_api import Browser, Page, Request, expect, sync_playwright

from cli_process import WEB_KEY as KEY

MODEL = "qwen2.5-coder:0.5b"
FINAL_ANSWER_SYSTEM = "Think step by step, then write a line '**Final Answer**' and the answer."
TIMEOUT_MS = 180_000


@pytest.fixture(scope="module")
def server(web_server):
    return web_server


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
    script_errors: list[str] = []
    page.on("pageerror", lambda error: script_errors.append(str(error)))
    page.goto(f"{server}/")
    yield page
    context.close()
    assert script_errors == []


def _chat_requests(page: Page) -> list[dict]:
    """The bodies the page posts to /v1/chat/completions, filled in as it sends them."""
    bodies: list[dict] = []

    def record(request: Request) -> None:
        if request.url.endswith("/v1/chat/completions"):
            bodies.append(request.post_data_json)

    page.on("request", record)
    return bodies


def _set(page: Page, *, system: str = "", temperature: str = "0", max_tokens: str = "") -> None:
    if page.locator("#settings").is_hidden():
        page.click("#toggle-settings")
    page.fill("#api-key", KEY)
    page.dispatch_event("#api-key", "change")
    page.fill("#system-prompt", system)
    page.fill("#temperature", temperature)
    page.fill("#max-tokens", max_tokens)
    expect(page.locator("#model-name")).to_have_text(MODEL)


def _send(page: Page, text: str) -> None:
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")


def _last_reply(page: Page):
    return page.locator("article.assistant").last


def test_asks_for_the_key_then_remembers_it(page: Page, server: str):
    expect(page.locator("#status")).to_contain_text("API key")
    expect(page.locator("#settings")).to_be_visible()
    page.fill("#api-key", KEY)
    page.dispatch_event("#api-key", "change")
    expect(page.locator("#model-name")).to_have_text(MODEL)
    expect(page.locator("#status")).to_have_text("")
    page.reload()
    expect(page.locator("#model-name")).to_have_text(MODEL)  # the key was kept in this browser


def test_streamed_reply_with_reasoning_block_and_answer(page: Page):
    requests = _chat_requests(page)
    _set(page, system=FINAL_ANSWER_SYSTEM)
    _send(page, "What is 6 times 7?")
    reply = _last_reply(page)
    # the reasoning shows while the reply is still streaming, in an open block
    page.wait_for_function(
        """() => { const reply = [...document.querySelectorAll('article.assistant')].pop();
                   return reply.dataset.state === 'streaming'
                       && reply.querySelector('.reasoning').open
                       && reply.querySelector('.reasoning-text').textContent.length > 20; }"""
    )
    expect(reply).to_have_attribute("data-state", "done", timeout=TIMEOUT_MS)
    reasoning = reply.locator("details.reasoning")
    expect(reasoning).to_be_visible()
    expect(reasoning).not_to_have_attribute("open", "")  # folded away once the answer came
    expect(reasoning.locator("summary")).to_have_text(re.compile(r"Thought for [\d.]+ s"))
    assert "42" in reasoning.locator(".reasoning-text").text_content()
    expect(reply.locator(".answer strong")).to_have_text("42")  # "**Final Answer: 42**" drawn in bold
    expect(reply.locator(".stats")).to_contain_text("tok/s")
    reasoning.locator("summary").click()
    expect(reasoning.locator(".reasoning-text")).to_be_visible()

    [first] = requests
    assert first["messages"] == [
        {"role": "system", "content": FINAL_ANSWER_SYSTEM},
        {"role": "user", "content": "What is 6 times 7?"},
    ]
    assert first["temperature"] == 0 and first["stream"] is True and "max_tokens" not in first

    # a second turn carries the first answer (never its reasoning) and the max tokens control
    page.fill("#max-tokens", "3")
    _send(page, "And 6 times 8?")
    expect(_last_reply(page)).to_have_attribute("data-state", "done", timeout=TIMEOUT_MS)
    expect(_last_reply(page).locator(".note")).to_have_text("The reply ended inside its reasoning: no final answer.")
    second = requests[1]
    assert second["max_tokens"] == 3
    assert second["messages"][2] == {"role": "assistant", "content": "**42**"}
    assert second["messages"][3] == {"role": "user", "content": "And 6 times 8?"}


def test_answer_markdown_and_math_are_drawn(page: Page):
    _set(page, system=FINAL_ANSWER_SYSTEM, max_tokens="300")
    _send(page, "What is the derivative of x^2? Write the answer in LaTeX.")
    reply = _last_reply(page)
    expect(reply).to_have_attribute("data-state", "done", timeout=TIMEOUT_MS)
    answer = reply.locator(".answer")
    math = answer.locator("math")
    expect(math.first).to_be_visible()
    box = math.first.bounding_box()
    assert box and box["height"] > 5 and box["width"] > 5  # drawn, not an empty element
    text = answer.text_content()
    assert "\\[" not in text and "\\boxed" not in text  # no TeX source left on the page


def test_stop_button_ends_the_reply_and_frees_the_server(page: Page, server: str):
    _set(page, max_tokens="1500")
    _send(page, "Write a long story about a robot who learns to paint.")
    reply = _last_reply(page)
    expect(page.locator("#stop")).to_be_enabled()
    page.wait_for_function(
        """() => [...document.querySelectorAll('article.assistant')].pop()
                    .querySelector('.reasoning-text').textContent.length > 40"""
    )
    page.click("#stop")
    expect(reply).to_have_attribute("data-state", "stopped")
    expect(reply.locator(".note")).to_have_text("Stopped.")
    expect(page.locator("#stop")).to_be_disabled()
    expect(page.locator("#send")).to_be_enabled()
    shown = reply.locator(".reasoning-text").text_content()
    deadline = time.monotonic() + 10
    while httpx.get(f"{server}/health").json()["running"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert httpx.get(f"{server}/health").json()["running"] == 0  # the slot was freed at once
    time.sleep(1)
    assert reply.locator(".reasoning-text").text_content() == shown  # nothing more arrives


def test_bad_control_value_is_named_and_nothing_is_sent(page: Page):
    requests = _chat_requests(page)
    _set(page, temperature="5")
    _send(page, "hello")
    expect(page.locator("#status")).to_have_text("Temperature must be a number from 0 to 2.")
    expect(page.locator("#settings")).to_be_visible()
    assert page.locator("article").count() == 0 and requests == []
    assert page.input_value("#prompt") == "hello"  # what the user typed is kept


def test_reasoning_controls_are_sent_and_what_they_did_is_shown(page: Page):
    """The thinking-budget, loop and language toggles go into the request (vLLM's and qwq's field names); the
    budget's transition is listed under the reply, the answer follows it, and the stats line sums it up."""
    requests = _chat_requests(page)
    _set(page, max_tokens="120")
    page.fill("#think-budget", "24")
    page.select_option("#loop-action", "stop")
    page.select_option("#language-mode", "warn")
    page.fill("#language", "en")
    _send(page, "Explain why the sum of two even numbers is even.")
    reply = _last_reply(page)
    expect(reply).to_have_attribute("data-state", "done", timeout=TIMEOUT_MS)
    expect(reply.locator(".notices li")).to_have_text(["thinking budget of 24 tokens reached — answering"])
    expect(reply.locator(".stats")).to_contain_text("thought")
    expect(reply.locator(".stats")).to_contain_text("other scripts")
    assert reply.locator(".answer").text_content().strip(), "no answer followed the budget's cue"
    [sent] = requests
    assert sent["thinking_token_budget"] == 24
    assert sent["repetition_detection"] == {"action": "stop"}
    assert sent["language_guard"] == {"mode": "warn", "language": "en"}

    page.fill("#think-budget", "0")
    _send(page, "hello")
    expect(page.locator("#status")).to_have_text("Thinking budget must be a whole number of at least 1.")
    assert len(requests) == 1


def test_the_page_is_served_under_a_strict_content_security_policy(browser: Browser, server: str):
    """The page works under `default-src 'self'` (every other test here runs under it too), and a remote image
    the model writes is a link the browser never fetches."""
    context = browser.new_context()
    page = context.new_page()
    fetched: list[str] = []
    page.on("request", lambda request: fetched.append(request.url))
    response = page.goto(f"{server}/")
    policy = response.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "img-src 'self' data:" in policy
    page.fill("#api-key", KEY)
    page.dispatch_event("#api-key", "change")
    expect(page.locator("#model-name")).to_have_text(MODEL)
    html = page.evaluate(
        """async (key) => (await (await fetch('ui/render', {method: 'POST', headers: {'Content-Type':
           'application/json', Authorization: 'Bearer ' + key}, body: JSON.stringify({text:
           '![x](https://elsewhere.example/p.png)'})})).json()).html""",
        KEY,
    )
    page.set_content(html)  # drawn as the page would draw it
    assert "elsewhere.example" not in " ".join(fetched)
    assert page.locator("a[href='https://elsewhere.example/p.png']").count() == 1
    context.close()
