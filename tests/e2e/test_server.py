"""`qwq serve` on loopback, driven by the official `openai` and `ollama` clients and by raw HTTP for bad input,
concurrency (batching must not change greedy results), the waiting-line bound and client disconnects."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import ollama
import openai
import pytest

from cli_process import live_server

KEY = "test-key-123"
MODEL = "qwen2.5-coder:0.5b"


@pytest.fixture(scope="module")
def server(gguf_path):
    arguments = ("--ctx", "1024", "--max-batch", "4", "--max-queue", "12", "--api-key", KEY)
    with live_server(MODEL, *arguments, home=gguf_path.parent.parent) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0, timeout=300)


def _ask(client, question: str, **kw):
    return client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": question}], temperature=0, **kw
    )


def test_openai_models_chat_and_stream(client):
    assert [m.id for m in client.models.list().data][0] == MODEL  # then every other pulled model
    reply = _ask(client, "What is 7 times 6? Reply with only the number.")
    assert reply.choices[0].message.content.strip() == "42"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.completion_tokens >= 1 and reply.usage.prompt_tokens > 10

    chunks = list(
        _ask(
            client,
            "What is 7 times 6? Reply with only the number.",
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reply.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.total_tokens == reply.usage.total_tokens

    cut = _ask(client, "Count from 1 to 100.", max_completion_tokens=5)
    assert cut.choices[0].finish_reason == "length" and cut.usage.completion_tokens == 5
    stopped = _ask(client, "Count from 1 to 20, separated by commas.", stop=["5"])
    assert stopped.choices[0].finish_reason == "stop" and "5" not in stopped.choices[0].message.content


def test_openai_logprobs_seed_and_n(client):
    reply = _ask(client, "Say yes.", logprobs=True, top_logprobs=3, max_tokens=4)
    entries = reply.choices[0].logprobs.content
    assert "".join(e.token for e in entries) == reply.choices[0].message.content
    for entry in entries:
        assert len(entry.top_logprobs) == 3 and entry.top_logprobs[0].logprob >= entry.logprob - 1e-6 >= -50
    sampled = [
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Name a fruit."}],
            temperature=1.0,
            seed=7,
            n=2,
            max_tokens=8,
        )
        for _ in range(2)
    ]
    assert len(sampled[0].choices) == 2
    assert [c.message.content for c in sampled[0].choices] == [c.message.content for c in sampled[1].choices]


def test_openai_completions(client):
    done = client.completions.create(
        model=MODEL, prompt="def add(a, b):\n    return", max_tokens=6, temperature=0, logprobs=2
    )
    assert done.choices[0].finish_reason in ("length", "stop") and done.choices[0].text.strip().startswith("a")
    assert len(done.choices[0].logprobs.tokens) == done.usage.completion_tokens
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model=MODEL, prompt="def add(a, b):\n    return", max_tokens=6, temperature=0, stream=True
        )
        if c.choices
    )
    assert streamed == done.choices[0].text


def test_ollama_client(server):
    api = ollama.Client(host=server, headers={"Authorization": f"Bearer {KEY}"})
    reply = api.chat(
        model=MODEL,
        messages=[{"role": "user", "content": "What is 7 times 6? Reply with only the number."}],
        options={"temperature": 0},
    )
    assert reply.message.content.strip() == "42" and reply.done and reply.done_reason == "stop"
    assert reply.eval_count >= 1 and reply.prompt_eval_count > 10 and reply.eval_duration > 0
    parts = list(
        api.chat(
            model=MODEL,
            messages=[{"role": "user", "content": "What is 7 times 6? Reply with only the number."}],
            options={"temperature": 0},
            stream=True,
        )
    )
    assert "".join(p.message.content for p in parts) == reply.message.content and parts[-1].done
    generated = api.generate(
        model=MODEL, prompt="What is 2+3? Reply with only the number.", options={"temperature": 0, "num_predict": 4}
    )
    assert "5" in generated.response
    assert [m.model for m in api.list().models][0] == MODEL  # then every other pulled model
    shown = api.show(MODEL)
    assert shown.modelinfo["general.architecture"] == "qwen2" and "im_start" in shown.template
    assert api.ps().models[0].name == MODEL
    with pytest.raises(ollama.ResponseError) as missing:
        api.chat(model="llama3", messages=[{"role": "user", "content": "hi"}])
    assert missing.value.status_code == 404


@pytest.mark.parametrize(
    ("path", "body", "status", "field"),
    [
        ("/v1/chat/completions", b"{not json", 400, None),
        ("/v1/chat/completions", b'{"model": "m", "messages": "hi"}', 400, "messages"),
        ("/v1/chat/completions", b'{"model": "qwen2.5-coder:0.5b"}', 400, "messages"),
        (
            "/v1/chat/completions",
            b'{"model": "qwen2.5-coder:0.5b", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}',
            400,
            "temperature",
        ),
        (
            "/v1/chat/completions",
            b'{"model": "qwen2.5-coder:0.5b", "messages": [{"role": "user", "content": "hi"}], "max_tokens": -3}',
            400,
            "max_tokens",
        ),
        (
            "/v1/chat/completions",
            b'{"model": "qwen2.5-coder:0.5b", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 99999999}',
            400,
            "max_tokens",
        ),
        ("/v1/chat/completions", b'{"model": "nope", "messages": [{"role": "user", "content": "hi"}]}', 404, None),
        ("/v1/completions", b'{"model": "qwen2.5-coder:0.5b", "prompt": "' + b"word " * 2000 + b'"}', 400, None),
        ("/v1/completions", b'{"model": "qwen2.5-coder:0.5b", "prompt": "\xff\xfe bad utf-8"}', 400, None),
        (
            "/api/chat",
            b'{"model": "qwen2.5-coder:0.5b", "messages": [{"role": "user", "content": "hi"}], '
            b'"options": {"top_k": -1}}',
            400,
            None,
        ),
        ("/api/generate", b'{"model": 5}', 400, None),
    ],
)
def test_bad_requests_get_4xx_json_errors(server, path, body, status, field):
    response = httpx.post(
        server + path,
        content=body,
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
        timeout=60,
    )
    assert response.status_code == status, response.text
    error = response.json()["error"]
    if path.startswith("/v1"):
        assert error["message"] and error["type"]
        if field:
            assert error["param"] == field, error
    else:
        assert isinstance(error, str) and error
    assert httpx.get(f"{server}/health").json()["status"] == "ok"  # still serving


def test_api_key_is_required(server):
    for path in ("/v1/models", "/api/tags"):
        response = httpx.get(server + path)
        assert response.status_code == 401
    assert httpx.post(f"{server}/ui/render", json={"text": "*x*"}).status_code == 401
    assert httpx.get(f"{server}/").status_code == 200  # the page itself is open; it asks for the key
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server}/v1", api_key="wrong", max_retries=0).models.list()


def test_oversized_body_is_refused(server):
    response = httpx.post(
        f"{server}/v1/completions", content=b"x" * (5 << 20), headers={"Authorization": f"Bearer {KEY}"}
    )
    assert response.status_code == 413


def test_disconnect_mid_stream_frees_the_slot(server):
    headers = {"Authorization": f"Bearer {KEY}"}
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Write a long story."}],
        "max_tokens": 800,
        "stream": True,
    }
    with httpx.stream("POST", f"{server}/v1/chat/completions", json=body, headers=headers, timeout=60) as response:
        lines = response.iter_lines()
        for _ in range(6):
            next(lines)
        assert httpx.get(f"{server}/health").json()["running"] == 1
    deadline = time.monotonic() + 10
    while httpx.get(f"{server}/health").json()["running"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert httpx.get(f"{server}/health").json()["running"] == 0


def test_full_waiting_line_answers_503_with_retry_after(server):
    headers = {"Authorization": f"Bearer {KEY}"}
    body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 12, "temperature": 0}

    def post(_):
        return httpx.post(f"{server}/v1/completions", json=body, headers=headers, timeout=300)

    with ThreadPoolExecutor(28) as pool:
        responses = list(pool.map(post, range(28)))
    statuses = [r.status_code for r in responses]
    assert set(statuses) == {200, 503}, statuses
    busy = next(r for r in responses if r.status_code == 503)
    assert busy.headers["retry-after"] and busy.json()["error"]["type"] == "server_busy"
    texts = {r.json()["choices"][0]["text"] for r in responses if r.status_code == 200}
    assert len(texts) == 1  # every admitted request got the same greedy text


QUESTIONS = [
    "What is 7 times 6?",
    "Write a haiku about rust.",
    "Explain TCP in one sentence.",
    "What is a Python list?",
    "List three colors.",
    "What is the capital of France?",
    "Translate 'cat' to French.",
    "What does HTTP stand for?",
]


def test_concurrent_clients_get_the_same_greedy_text_as_alone(client, server):
    """24 requests from 8 concurrent clients: each answer equals the answer that prompt gets alone."""

    def ask(question):
        reply = _ask(client, question, max_tokens=16)
        return reply.choices[0].message.content, reply.usage.completion_tokens

    started = time.perf_counter()
    alone = {q: ask(q) for q in QUESTIONS}
    alone_seconds = time.perf_counter() - started
    jobs = [QUESTIONS[i % len(QUESTIONS)] for i in range(24)]
    started = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(ask, jobs))
    together_seconds = time.perf_counter() - started
    assert [text for text, _ in together] == [alone[q][0] for q in jobs]
    alone_rate = sum(n for _, n in alone.values()) / alone_seconds
    together_rate = sum(n for _, n in together) / together_seconds
    print(
        f"\naggregate decode: 1 client {alone_rate:.1f} tok/s, 8 clients {together_rate:.1f} tok/s "
        f"({together_rate / alone_rate:.2f}x)"
    )
