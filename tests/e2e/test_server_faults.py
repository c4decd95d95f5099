"""`qwq serve` under faults, driven as a user drives it (the official `openai` and `ollama` clients, raw HTTP):
finish reasons in both dialects, extreme and out-of-range values, a full server, a burst, clients that go
away, Ollama's per-request num_ctx, a model whose forward produces NaN, and SIGTERM mid-stream.

Every call has a client timeout, so a request the server never ends fails its test instead of hanging it.
The 0.5B server is the package's plain one (tests/e2e/conftest.py), its capacity and context read from
cli_process; the SIGTERM test stops a server of its own.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import gguf
import httpx
import numpy as np
import ollama
import openai
import pytest

from cli_process import SHARED_CONTEXT as CONTEXT
from cli_process import SHARED_MAX_BATCH, SHARED_MAX_QUEUE, server_process
from tiny_checkpoints import write_gguf

MODEL = "qwen2.5-coder:0.5b"
CAPACITY = SHARED_MAX_BATCH + SHARED_MAX_QUEUE
TIMEOUT = 120  # seconds a generating call may take on a loaded 2-core machine; nothing waits longer
QUICK = 15  # seconds for a call the server must answer without generating

FORTY_TWO = "What is 7 times 6? Reply with only the number."
COUNT = "Count from 1 to 20, separated by commas."
LONG = "Count from 1 to 1000, separated by commas."  # greedy, it runs to any budget under 1000 tokens


@pytest.fixture(scope="module")
def server(plain_server) -> str:
    return plain_server


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=TIMEOUT)


@pytest.fixture(scope="module")
def api(server) -> ollama.Client:
    return ollama.Client(host=server, timeout=TIMEOUT)


def _health(url: str) -> dict:
    return httpx.get(f"{url}/health", timeout=QUICK).json()


def _wait_idle(url: str, seconds: float, running: int = 0) -> dict:
    """Poll /health until at most `running` requests run and none waits, or `seconds` pass; the last answer."""
    deadline = time.monotonic() + seconds
    while True:
        health = _health(url)
        if (health["running"] <= running and health["waiting"] == 0) or time.monotonic() > deadline:
            return health
        time.sleep(0.2)


def _in_parallel(calls, workers: int | None = None):
    """Run zero-argument callables together; their results in order (any exception re-raised)."""
    with ThreadPoolExecutor(workers or len(calls)) as pool:
        futures = [pool.submit(call) for call in calls]
        return [f.result(timeout=4 * TIMEOUT) for f in futures]


def _openai_chat(client: openai.OpenAI, prompt: str, stream: bool, **kw) -> tuple[str, str, int | None]:
    """(text, finish reason, completion tokens) of a greedy chat through the openai client."""
    messages = [{"role": "user", "content": prompt}]
    if not stream:
        reply = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, **kw)
        (choice,) = reply.choices
        return choice.message.content, choice.finish_reason, reply.usage.completion_tokens
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=messages,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
            **kw,
        )
    )
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(reasons) == 1, reasons  # exactly one chunk ends the choice
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, reasons[0], chunks[-1].usage.completion_tokens


def _ollama_chat(api: ollama.Client, prompt: str, stream: bool, **options) -> tuple[str, str, int | None]:
    """(text, done reason, eval count) of a greedy chat through the ollama client."""
    messages = [{"role": "user", "content": prompt}]
    options = {"temperature": 0, **options}
    if not stream:
        reply = api.chat(model=MODEL, messages=messages, options=options, stream=False)
        assert reply.done
        return reply.message.content, reply.done_reason, reply.eval_count
    parts = list(api.chat(model=MODEL, messages=messages, options=options, stream=True))
    assert parts[-1].done and not any(p.done for p in parts[:-1])
    return "".join(p.message.content for p in parts), parts[-1].done_reason, parts[-1].eval_count


# -- finish reasons


@pytest.mark.parametrize("dialect", ["openai", "ollama"])
def test_finish_reasons_stop_token_stop_string_and_length(client, api, dialect):
    """Each way a reply ends, streamed and not: the end token and a stop string say "stop" (the text ends
    before the stop string), the token budget says "length" after exactly that many tokens."""
    if dialect == "openai":
        cases = {
            "token": lambda s: _openai_chat(client, FORTY_TWO, s),
            "length": lambda s: _openai_chat(client, COUNT, s, max_tokens=10),
            "string": lambda s: _openai_chat(client, COUNT, s, max_tokens=20, stop=[", 3"]),
        }
    else:
        cases = {
            "token": lambda s: _ollama_chat(api, FORTY_TWO, s),
            "length": lambda s: _ollama_chat(api, COUNT, s, num_predict=10),
            "string": lambda s: _ollama_chat(api, COUNT, s, num_predict=20, stop=[", 3"]),
        }
    keys = [(case, stream) for case in cases for stream in (False, True)]
    results = dict(zip(keys, _in_parallel([lambda c=c, s=s: cases[c](s) for c, s in keys]), strict=True))
    for case in cases:  # streamed text, reason and count == the non-streamed ones
        assert results[case, True] == results[case, False], (case, results[case, True], results[case, False])

    text, reason, _ = results["token", False]
    assert (text.strip(), reason) == ("42", "stop")
    counted, reason, tokens = results["length", False]
    assert reason == "length" and tokens == 10, results["length", False]
    assert ", 3" in counted, counted  # the reference run passes the stop string
    text, reason, tokens = results["string", False]
    assert reason == "stop" and text == counted[: counted.index(", 3")], (text, counted)
    assert tokens < 20


# -- extreme and out-of-range values


def _chat_body(prompt: str = COUNT, **fields) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": prompt}], **fields}


def test_tiny_temperatures_are_answered_greedily(server):
    """Temperatures far below the greedy threshold (1/T would be inf) and at it (a huge but finite scale) are
    answered, each with exactly the greedy text, in both dialects."""
    openai_temperatures = [0, 1e-300, 5e-324, 1e-5]
    calls = [
        lambda t=t: httpx.post(
            f"{server}/v1/chat/completions", json=_chat_body(temperature=t, max_tokens=6), timeout=TIMEOUT
        )
        for t in openai_temperatures
    ] + [
        lambda t=t: httpx.post(
            f"{server}/api/chat",
            json=_chat_body(stream=False, options={"temperature": t, "num_predict": 6}),
            timeout=TIMEOUT,
        )
        for t in (1e-300, 5e-324)
    ]
    responses = _in_parallel(calls)
    for response in responses:
        assert response.status_code == 200, response.text
    texts = [r.json()["choices"][0]["message"]["content"] for r in responses[: len(openai_temperatures)]]
    texts += [r.json()["message"]["content"] for r in responses[len(openai_temperatures) :]]
    assert texts[0].startswith("1, 2") and texts == [texts[0]] * len(texts), texts


@pytest.mark.parametrize("seed", [2**64, -(2**63) - 1, 10**30])
def test_out_of_range_seed_is_refused_naming_seed(server, seed):
    openai_reply = httpx.post(
        f"{server}/v1/chat/completions", json=_chat_body(seed=seed, max_tokens=2, temperature=1), timeout=QUICK
    )
    assert openai_reply.status_code == 400, openai_reply.text
    error = openai_reply.json()["error"]
    assert "seed" in error["message"] and error["type"] == "invalid_request_error", error
    ollama_reply = httpx.post(
        f"{server}/api/chat", json=_chat_body(stream=False, options={"seed": seed, "num_predict": 2}), timeout=QUICK
    )
    assert ollama_reply.status_code == 400, ollama_reply.text
    assert "seed" in ollama_reply.json()["error"]


def test_extreme_values_are_answered_or_refused_never_500(server):
    """Values at the edges of what JSON and the fields allow: each is answered (200) or refused (400), never a
    500, never left hanging."""
    raw_ollama = [  # JSON that Python's json module writes and reads, but httpx refuses to encode
        b'{"model": "%s", "messages": [{"role": "user", "content": "hi"}], "stream": false, '
        b'"options": {"temperature": %s, "num_predict": 1}}' % (MODEL.encode(), value)
        for value in (b"Infinity", b"-Infinity", b"NaN", b"1e400")
    ]
    ollama_options = [
        {"temperature": 1e308},
        {"top_p": 1e-300, "temperature": 1},
        {"top_k": 10**30, "temperature": 1},
        {"repeat_penalty": 1e300},
        {"repeat_penalty": 1e-300},
    ]
    openai_fields = [
        {"top_k": 2**70, "temperature": 1},
        {"top_p": 5e-324, "temperature": 2},
        {"repetition_penalty": 1e300},
        {"max_tokens": 2**63},
        {"n": 17},
    ]
    calls = [
        lambda body=body: httpx.post(
            f"{server}/api/chat", content=body, headers={"Content-Type": "application/json"}, timeout=TIMEOUT
        )
        for body in raw_ollama
    ]
    calls += [
        lambda o=o: httpx.post(
            f"{server}/api/chat",
            json=_chat_body("hi", stream=False, options={"num_predict": 1, **o}),
            timeout=TIMEOUT,
        )
        for o in ollama_options
    ]
    calls += [
        lambda f=f: httpx.post(
            f"{server}/v1/chat/completions", json=_chat_body("hi", **{"max_tokens": 1, **f}), timeout=TIMEOUT
        )
        for f in openai_fields
    ]
    responses = _in_parallel(calls, workers=CAPACITY)  # at most the capacity: no 503 muddles the statuses
    for response in responses:
        assert response.status_code in (200, 400), (response.request.content[:200], response.text)
        body = response.json()
        if response.status_code == 200:
            assert body.get("done", True) and "error" not in body, body
        else:
            assert body["error"], body
    health = _wait_idle(server, 10)
    assert (health["running"], health["waiting"]) == (0, 0), health


BAD_REQUESTS = [
    ("/v1/chat/completions", _chat_body(seed=2**64)),
    ("/v1/chat/completions", _chat_body(temperature="hot")),
    ("/v1/chat/completions", _chat_body(temperature=2.5)),
    ("/v1/chat/completions", _chat_body(max_tokens=-1)),
    ("/v1/chat/completions", _chat_body(max_tokens=10**9)),
    ("/v1/chat/completions", _chat_body(top_p=0)),
    ("/v1/chat/completions", _chat_body(n=0)),
    ("/v1/chat/completions", _chat_body(repetition_penalty=1e-9)),
    ("/v1/chat/completions", {"model": MODEL, "messages": []}),
    ("/v1/completions", {"model": MODEL, "prompt": [10**12]}),
    ("/v1/completions", {"model": MODEL, "prompt": ""}),
    ("/api/chat", _chat_body(options={"seed": 2**64})),
    ("/api/chat", _chat_body(options={"num_ctx": 0})),
    ("/api/chat", _chat_body(options={"num_ctx": CONTEXT + 1})),
    ("/api/chat", _chat_body(options={"num_predict": 0})),
    ("/api/chat", _chat_body(options={"top_k": -1})),
    ("/api/generate", {"model": MODEL, "prompt": "hi", "options": {"temperature": -1}}),
    ("/api/chat", _chat_body(model="missing")),
]


def test_forty_bad_requests_in_a_row_then_a_prompt_answer(server):
    started = time.monotonic()
    for index in range(40):
        path, body = BAD_REQUESTS[index % len(BAD_REQUESTS)]
        response = httpx.post(server + path, json=body, timeout=QUICK)
        assert 400 <= response.status_code < 500, (path, body, response.status_code, response.text)
        assert response.json()["error"], response.text
    assert time.monotonic() - started < 60
    health = _health(server)
    assert (health["running"], health["waiting"]) == (0, 0), health
    started = time.monotonic()
    reply = httpx.post(f"{server}/v1/chat/completions", json=_chat_body(FORTY_TWO, temperature=0), timeout=60)
    assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"].strip() == "42"
    assert time.monotonic() - started < 60


# -- more choices than the server holds


@pytest.mark.parametrize("n", [CAPACITY + 1, 16])
def test_more_choices_than_capacity_is_503_and_leaves_nothing(server, client, n):
    response = httpx.post(f"{server}/v1/chat/completions", json=_chat_body(n=n, max_tokens=2), timeout=QUICK)
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] and response.json()["error"]["type"] == "server_busy"
    with pytest.raises(openai.APIStatusError) as refused:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], n=n, timeout=QUICK)
    assert refused.value.status_code == 503
    health = _wait_idle(server, 5)
    assert (health["running"], health["waiting"]) == (0, 0), health


def test_choices_beyond_the_free_capacity_are_refused_whole(server):
    """With one stream running, n = capacity no longer fits: 503, and none of its choices is left running or
    waiting next to the stream; closing the stream then frees its slot."""
    body = _chat_body(LONG, temperature=0, max_tokens=200, stream=True)
    with httpx.stream("POST", f"{server}/v1/chat/completions", json=body, timeout=TIMEOUT) as stream:
        lines = stream.iter_lines()
        for _ in range(4):
            next(lines)
        response = httpx.post(f"{server}/v1/chat/completions", json=_chat_body(n=CAPACITY, max_tokens=2), timeout=QUICK)
        assert response.status_code == 503, response.text
        health = _health(server)
        assert (health["running"], health["waiting"]) == (1, 0), health
    health = _wait_idle(server, 10)
    assert (health["running"], health["waiting"]) == (0, 0), health


# -- a burst beyond the capacity


def test_burst_admits_exactly_the_capacity_and_503s_the_rest(server):
    """24 requests at once against 4 slots + 8 waiting places: 12 answered (the same greedy text in both
    dialects), 12 refused with 503 and Retry-After; nothing else, nothing left over."""
    gate = threading.Barrier(2 * CAPACITY, timeout=QUICK)

    def post(index: int) -> httpx.Response:
        if index % 2:
            path = "/api/generate"
            body = {
                "model": MODEL,
                "prompt": "Once upon a time",
                "raw": True,
                "stream": False,
                "options": {"temperature": 0, "num_predict": 8},
            }
        else:
            path = "/v1/completions"
            body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 8, "temperature": 0}
        gate.wait()
        return httpx.post(server + path, json=body, timeout=TIMEOUT)

    responses = _in_parallel([lambda i=i: post(i) for i in range(2 * CAPACITY)])
    statuses = [r.status_code for r in responses]
    assert sorted(statuses) == [200] * CAPACITY + [503] * CAPACITY, statuses
    texts = set()
    for index, response in enumerate(responses):
        if response.status_code == 503:
            assert response.headers["retry-after"] and response.json()["error"], response.text
            continue
        body = response.json()
        if index % 2:
            assert body["done_reason"] == "length" and body["eval_count"] == 8, body
            texts.add(body["response"])
        else:
            assert body["choices"][0]["finish_reason"] == "length", body
            texts.add(body["choices"][0]["text"])
    assert len(texts) == 1, texts
    health = _wait_idle(server, 10)
    assert (health["running"], health["waiting"]) == (0, 0), health


# -- Ollama's num_ctx


def test_num_ctx_is_honoured_up_to_the_loaded_context(api):
    messages = [{"role": "user", "content": FORTY_TWO}]
    probe = api.chat(model=MODEL, messages=messages, options={"temperature": 0, "num_predict": 1}, stream=False)
    prompt = probe.prompt_eval_count
    assert prompt > 10

    # a context two tokens longer than the prompt: the reply gets exactly two tokens, streamed or not
    limited = api.chat(model=MODEL, messages=messages, options={"temperature": 0, "num_ctx": prompt + 2}, stream=False)
    assert (limited.done_reason, limited.eval_count) == ("length", 2), limited
    parts = list(
        api.chat(model=MODEL, messages=messages, options={"temperature": 0, "num_ctx": prompt + 2}, stream=True)
    )
    assert (parts[-1].done_reason, parts[-1].eval_count) == ("length", 2), parts[-1]
    generated = api.generate(model=MODEL, prompt=FORTY_TWO, options={"temperature": 0, "num_ctx": prompt + 2})
    assert (generated.done_reason, generated.eval_count) == ("length", 2), generated
    # the whole loaded context is allowed
    full = api.chat(model=MODEL, messages=messages, options={"num_ctx": CONTEXT, "num_predict": 1}, stream=False)
    assert full.done_reason == "length"

    refusals = [
        ({"num_ctx": prompt}, "context"),  # the prompt fills it
        ({"num_ctx": 8}, "context"),  # the prompt exceeds it
        ({"num_ctx": prompt + 2, "num_predict": 10}, "context"),  # room for 2, asked for 10
        ({"num_ctx": CONTEXT + 1}, "num_ctx"),  # more than the loaded context
        ({"num_ctx": 10**9}, "num_ctx"),
        ({"num_ctx": 0}, "num_ctx"),
    ]
    for options, word in refusals:
        with pytest.raises(ollama.ResponseError) as refused:
            api.chat(model=MODEL, messages=messages, options=options, stream=False)
        assert refused.value.status_code == 400 and word in refused.value.error, (options, refused.value.error)


# -- a failure inside generation


@pytest.fixture(scope="module")
def poisoned(tmp_path_factory):
    """A tiny random checkpoint whose embedding row for the byte 'Z' is NaN: any prompt with a 'Z' makes the
    forward produce NaN logits; every other prompt runs normally."""
    home = tmp_path_factory.mktemp("poisoned")
    path = write_gguf(home / "tiny-poisoned.gguf")
    reader = gguf.GGUFReader(path, "r+")
    (embedding,) = [t for t in reader.tensors if t.name == "token_embd.weight"]
    embedding.data[ord("Z")] = np.nan  # byte-level vocabulary: token id b spells byte b
    reader.data.flush()
    del reader, embedding
    with server_process(str(path), "--ctx", "64", "--max-batch", "2", "--max-queue", "2", home=home) as server:
        yield server.url


def _tiny_chat(url: str, content: str, stream: bool = False, dialect: str = "openai") -> httpx.Response:
    if dialect == "openai":
        body = _chat_body(content, model="tiny-poisoned", max_tokens=8, temperature=0, stream=stream)
        return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=TIMEOUT)
    options = {"num_predict": 8, "temperature": 0}
    body = _chat_body(content, model="tiny-poisoned", stream=stream, options=options)
    return httpx.post(f"{url}/api/chat", json=body, timeout=TIMEOUT)


def _sse_events(response: httpx.Response) -> list[dict]:
    lines = [line.removeprefix("data: ") for line in response.text.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]", lines
    return [json.loads(line) for line in lines[:-1]]


def test_nan_forward_fails_that_request_with_a_clear_error_every_time(poisoned):
    for _ in range(2):  # the server stays up and answers the same way again
        reply = _tiny_chat(poisoned, "Zebra")
        assert reply.status_code == 200, reply.text
        (choice,) = reply.json()["choices"]
        assert choice["finish_reason"] == "error" and "finite" in choice["error"]["message"], choice
        assert "Traceback" not in reply.text

        events = _sse_events(_tiny_chat(poisoned, "Zebra", stream=True))
        final = events[-1]["choices"][0]
        assert final["finish_reason"] == "error" and "finite" in final["error"]["message"], final

        ollama_reply = _tiny_chat(poisoned, "Zebra", dialect="ollama")  # ollama answers a failed generation 500
        assert ollama_reply.status_code == 500, ollama_reply.text
        assert "finite" in ollama_reply.json()["error"] and "Traceback" not in ollama_reply.text

        streamed = _tiny_chat(poisoned, "Zebra", stream=True, dialect="ollama")
        last = json.loads(streamed.text.strip().splitlines()[-1])
        assert last["done"] and last["done_reason"] == "error" and "finite" in last["error"], last
    health = _health(poisoned)
    assert (health["running"], health["waiting"]) == (0, 0), health


def test_nan_failure_through_the_official_clients(poisoned):
    client = openai.OpenAI(base_url=f"{poisoned}/v1", api_key="unused", max_retries=0, timeout=TIMEOUT)
    messages = [{"role": "user", "content": "Zebra"}]
    reply = client.chat.completions.create(model="tiny-poisoned", messages=messages, max_tokens=8)
    assert reply.choices[0].finish_reason == "error"
    assert "finite" in reply.choices[0].model_extra["error"]["message"]
    chunks = list(client.chat.completions.create(model="tiny-poisoned", messages=messages, max_tokens=8, stream=True))
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "error"

    api = ollama.Client(host=poisoned, timeout=TIMEOUT)
    with pytest.raises(ollama.ResponseError, match="finite") as refused:  # HTTP 500 with the message, as ollama
        api.chat(model="tiny-poisoned", messages=messages, options={"num_predict": 8}, stream=False)
    assert refused.value.status_code == 500
    with pytest.raises(ollama.ResponseError, match="finite"):  # a streamed error line is how ollama reports it
        list(api.chat(model="tiny-poisoned", messages=messages, options={"num_predict": 8}, stream=True))


def test_nan_failure_fails_only_its_own_request(poisoned):
    """A clean prompt next to a poisoned one gets exactly the answer it gets alone."""
    alone = _tiny_chat(poisoned, "hello")
    assert alone.status_code == 200, alone.text
    (choice,) = alone.json()["choices"]
    assert choice["finish_reason"] in ("length", "stop") and "error" not in choice, choice
    for _ in range(2):
        clean, bad = _in_parallel([lambda: _tiny_chat(poisoned, "hello"), lambda: _tiny_chat(poisoned, "Zebra")])
        assert bad.json()["choices"][0]["finish_reason"] == "error", bad.text
        assert clean.json()["choices"] == alone.json()["choices"], (clean.text, alone.text)


# -- refusals that must name their field, and a valid seed that must not be refused


def test_openai_error_param_names_a_refused_sampling_field(server):
    """OpenAI's error object names the offending parameter in `param`, as it does for a value of the wrong
    type: a seed out of range and a repetition penalty below the engine's floor must say which field."""
    for fields, name in (({"seed": 2**64}, "seed"), ({"repetition_penalty": 1e-9}, "repetition_penalty")):
        reply = httpx.post(f"{server}/v1/chat/completions", json=_chat_body(max_tokens=2, **fields), timeout=QUICK)
        assert reply.status_code == 400, reply.text
        assert reply.json()["error"]["param"] == name, reply.json()


def test_largest_seed_with_several_choices_is_accepted(server):
    """seed 2**64 - 1 is in range; choice i is seeded seed + i, which must not turn a valid request into a
    400 quoting a seed the client never sent."""
    body = _chat_body(FORTY_TWO, seed=2**64 - 1, n=2, max_tokens=2, temperature=1)
    reply = httpx.post(f"{server}/v1/chat/completions", json=body, timeout=TIMEOUT)
    assert reply.status_code == 200, reply.text
    assert len(reply.json()["choices"]) == 2


# -- a client that goes away before a non-streamed answer


@pytest.mark.parametrize("dialect", ["openai", "ollama"])
def test_non_streaming_client_that_disconnects_frees_its_slot(server, dialect):
    """The client gives up after 1 s of a 300-token greedy answer: the server must cancel it (the slot frees
    within a few seconds), not generate on for nobody."""
    before = _health(server)["running"]  # 0, or an earlier case's abandoned request if the server lacks this
    if dialect == "openai":
        path, body = "/v1/chat/completions", _chat_body(LONG, temperature=0, max_tokens=300)
    else:
        path, body = "/api/chat", _chat_body(LONG, stream=False, options={"temperature": 0, "num_predict": 300})
    with pytest.raises(httpx.TimeoutException):
        httpx.post(server + path, json=body, timeout=1)
    health = _wait_idle(server, 5, running=before)
    assert health["running"] <= before, f"the abandoned request still runs 5 s after its client left: {health}"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "hi \ud800"}]}),
        ("/v1/completions", {"model": MODEL, "prompt": "hi \udfff"}),
        ("/api/chat", {"model": MODEL, "messages": [{"role": "user", "content": "hi \ud800"}], "stream": False}),
        ("/api/generate", {"model": MODEL, "prompt": "hi \ud800", "stream": False}),
    ],
)
def test_a_lone_surrogate_is_a_400_in_the_routes_dialect(server, path, body):
    """JSON can spell a lone UTF-16 surrogate ("\\ud800"), which is no character: a 400 JSON error saying so
    (it was a text/plain 500), and the server goes on."""
    raw = json.dumps(body)  # ensure_ascii keeps the escape as the client sends it
    reply = httpx.post(f"{server}{path}", content=raw, headers={"Content-Type": "application/json"}, timeout=TIMEOUT)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    message = error["message"] if path.startswith("/v1") else error
    assert "lone surrogate" in message
    assert _health(server)["status"] == "ok"


# -- SIGTERM mid-stream (a server of its own: it stops it)


def test_sigterm_stops_the_server_mid_stream(gguf_path):
    """A long streamed generation is in flight when SIGTERM comes: the process exits within 10 s and the
    client's stream ends (cleanly or with a dropped connection), it does not hang."""
    body = _chat_body("Write a very long story about a lighthouse.", max_tokens=800, stream=True)
    received, ended = [], threading.Event()
    outcome: list[BaseException | None] = []
    first_lines = threading.Event()

    def read(url: str) -> None:
        try:
            with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=30) as response:
                for line in response.iter_lines():
                    received.append(line)
                    if len(received) >= 6:
                        first_lines.set()
            outcome.append(None)
        except Exception as exc:  # whatever ended the stream is the result
            outcome.append(exc)
        finally:
            first_lines.set()
            ended.set()

    with server_process(MODEL, "--ctx", str(CONTEXT), home=gguf_path.parent.parent) as served:
        reader = threading.Thread(target=read, args=(served.url,), daemon=True)
        reader.start()
        assert first_lines.wait(TIMEOUT) and not ended.is_set(), (received, outcome)
        assert _health(served.url)["running"] >= 1

        started = time.monotonic()
        served.process.send_signal(signal.SIGTERM)
        try:
            code = served.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pytest.fail("qwq serve still runs 10 s after SIGTERM")
        stopped = time.monotonic() - started
        assert ended.wait(10), "the client's stream did not end after the server stopped"
        error = outcome[0]
        assert error is None or isinstance(error, httpx.HTTPError), repr(error)
        output = served.process.stdout.read()
    assert "Traceback" not in output, output
    print(f"\nstopped {stopped:.1f} s after SIGTERM (exit code {code}); stream ended with {error!r}")
    assert not any('"finish_reason": "length"' in line for line in received)  # it was still generating
