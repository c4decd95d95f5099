"""The HTTP edge of `qwq serve`, each hole the probe found reproduced (issue 17): a web page driving the local
server (cross-origin text/plain POSTs, DNS rebinding through the Host header), bodies over the limit in
every transfer encoding, bodies and headers that never finish, loose types, internal field names, secrets
on the command line and in /api/show. A tiny random checkpoint serves (fast); raw sockets send what no
client library would.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from cli_process import server_process
from tiny_checkpoints import write_gguf

QUICK = 15
READ_TIMEOUT = 2  # the server's --read-timeout here: a stalled request must be answered 408 within it


@pytest.fixture(scope="module")
def tiny_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("edge-home")
    write_gguf(home / "tiny-edge.gguf", context=512)
    return home


@pytest.fixture(scope="module")
def served(tiny_home):
    arguments = ("--ctx", "256", "--max-batch", "2", "--max-queue", "4", "--read-timeout", str(READ_TIMEOUT))
    with server_process(str(tiny_home / "tiny-edge.gguf"), *arguments, home=tiny_home) as server:
        yield server


@pytest.fixture(scope="module")
def url(served) -> str:
    return served.url


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _chat(**extra) -> dict:
    return {"model": "tiny-edge", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **extra}


def _post(url: str, path: str, body, headers: dict | None = None) -> httpx.Response:
    content = body if isinstance(body, bytes | str) else json.dumps(body)
    return httpx.post(f"{url}{path}", content=content, headers=headers or {}, timeout=QUICK)


def _raw(url: str, data: bytes, wait: float = QUICK) -> bytes:
    """Send raw bytes on a fresh connection; everything the server answers until it closes or `wait` ends."""
    with socket.create_connection(("127.0.0.1", _port(url)), timeout=wait) as connection:
        connection.sendall(data)
        received = b""
        try:
            while chunk := connection.recv(65536):
                received += chunk
        except TimeoutError:
            pass
    return received


# -- a web page cannot drive the server
def test_cross_origin_text_plain_post_is_refused(url):
    """The browser's no-preflight request: Content-Type text/plain from another origin."""
    headers = {"Origin": "https://evil.example", "Content-Type": "text/plain"}
    for path, body in (("/v1/chat/completions", _chat()), ("/api/generate", {"model": "tiny-edge", "prompt": "x"})):
        response = _post(url, path, body, headers)
        assert response.status_code == 403, response.text
        assert "evil.example" in json.dumps(response.json()) and "--cors-origin" in response.text


def test_cross_origin_json_post_and_preflight_are_refused(url):
    headers = {"Origin": "http://localhost:9999", "Content-Type": "application/json"}  # another local app
    assert _post(url, "/v1/chat/completions", _chat(), headers).status_code == 403
    preflight = httpx.options(
        f"{url}/v1/chat/completions",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        timeout=QUICK,
    )
    assert preflight.status_code == 403 and "access-control-allow-origin" not in preflight.headers
    assert _post(url, "/v1/chat/completions", _chat(), {"Origin": "null"}).status_code == 403


def test_the_pages_own_requests_and_the_official_clients_work(url):
    same_origin = {"Origin": url, "Content-Type": "application/json"}
    assert _post(url, "/v1/chat/completions", _chat(), same_origin).status_code == 200
    assert _post(url, "/ui/render", {"text": "**x**"}, same_origin).status_code == 200
    page_form = _post(url, "/ui/render", {"text": "x"}, {"Origin": url, "Content-Type": "text/plain"})
    assert page_form.status_code == 415 and "JSON" in page_form.json()["error"]
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=QUICK)
    reply = client.chat.completions.create(
        model="tiny-edge", messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    assert reply.choices[0].finish_reason in ("stop", "length")
    # curl -d sends a form type without an Origin: still read as JSON, as ollama does
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    assert (
        _post(
            url,
            "/api/generate",
            {"model": "tiny-edge", "prompt": "x", "stream": False, "options": {"num_predict": 1}},
            form,
        ).status_code
        == 200
    )


def test_dns_rebinding_host_is_refused(url):
    for host in ("evil.example", "evil.example:11435", "127.0.0.1.nip.example"):
        response = httpx.get(f"{url}/v1/models", headers={"Host": host}, timeout=QUICK)
        assert response.status_code == 403, host
        assert "--allowed-host" in response.json()["error"]["message"]
    page = httpx.get(f"{url}/", headers={"Host": "evil.example"}, timeout=QUICK)
    assert page.status_code == 403 and page.headers["content-type"] == "application/json"
    for host in (f"127.0.0.1:{_port(url)}", f"localhost:{_port(url)}", "[::1]", "app.localhost"):
        assert httpx.get(f"{url}/v1/models", headers={"Host": host}, timeout=QUICK).status_code == 200, host


def test_allowed_host_and_cors_origin_flags(tiny_home):
    arguments = ("--ctx", "64", "--allowed-host", "qwq.internal", "--cors-origin", "https://app.example")
    with server_process(str(tiny_home / "tiny-edge.gguf"), *arguments, home=tiny_home) as server:
        url = server.url
        assert httpx.get(f"{url}/v1/models", headers={"Host": "qwq.internal"}, timeout=QUICK).status_code == 200
        assert httpx.get(f"{url}/v1/models", headers={"Host": "other.internal"}, timeout=QUICK).status_code == 403
        allowed = {"Origin": "https://app.example", "Content-Type": "application/json"}
        response = _post(url, "/v1/chat/completions", _chat(), allowed)
        assert response.status_code == 200 and response.headers["access-control-allow-origin"] == "https://app.example"
        assert (
            _post(url, "/v1/chat/completions", _chat(), {**allowed, "Origin": "https://b.example"}).status_code == 403
        )


# -- bodies and headers
def test_chunked_body_over_the_limit_is_413(url):
    def chunks():
        for _ in range(5):
            yield b" " * (1 << 20)

    response = httpx.post(f"{url}/v1/chat/completions", content=chunks(), timeout=QUICK)
    assert response.status_code == 413 and "exceeds" in response.json()["error"]["message"]
    declared = _post(url, "/api/chat", b"{" + b" " * (5 << 20) + b"}")
    assert declared.status_code == 413 and "exceeds" in declared.json()["error"]


def test_a_body_shorter_than_its_content_length_gets_408(url):
    started = time.monotonic()
    head = b'POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{"model":'
    answer = _raw(url, head)
    assert time.monotonic() - started < READ_TIMEOUT + 5
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["message"].startswith("the request body")


def test_headers_that_never_finish_get_408(url):
    started = time.monotonic()
    answer = _raw(url, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    assert time.monotonic() - started < READ_TIMEOUT + 5
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"headers" in answer
    assert httpx.get(f"{url}/health", timeout=QUICK).json()["status"] == "ok"


def test_idle_keep_alive_connections_are_closed(url):
    started = time.monotonic()
    answer = _raw(url, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", wait=30)
    assert answer.startswith(b"HTTP/1.1 200") and time.monotonic() - started < 20  # closed by the server


# -- types and names
@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/chat/completions", _chat(max_tokens=True), "max_tokens"),
        ("/v1/chat/completions", _chat(max_tokens="8"), "max_tokens"),
        ("/v1/chat/completions", _chat(stream="yes"), "stream"),
        ("/v1/chat/completions", _chat(logprobs="yes"), "logprobs"),
        ("/v1/chat/completions", _chat(temperature="0.5"), "temperature"),
        ("/v1/chat/completions", _chat(n=2.0), "n"),
    ],
)
def test_loose_types_are_refused_by_name(url, path, body, field):
    response = _post(url, path, body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == field


def test_errors_use_the_clients_names(url):
    ollama = {"model": "tiny-edge", "messages": [{"role": "user", "content": "hi"}], "stream": False}
    response = _post(url, "/api/chat", {**ollama, "options": {"num_predict": 10**6}})
    assert response.status_code == 400 and "num_predict" in response.json()["error"], response.text
    assert "max_tokens" not in response.json()["error"]
    response = _post(url, "/api/chat", {**ollama, "options": {"num_predict": "5"}})
    assert response.status_code == 400 and "options.num_predict" in response.json()["error"]
    response = _post(url, "/api/chat", {**ollama, "options": {"num_ctx": 10**6}})
    assert response.status_code == 400 and "num_ctx" in response.json()["error"], response.text
    long = [{"role": "user", "content": "word " * 400}]
    response = _post(url, "/v1/chat/completions", {"model": "tiny-edge", "messages": long})
    assert response.status_code == 400 and response.json()["error"]["param"] == "messages", response.text
    response = _post(url, "/v1/chat/completions", _chat(max_tokens=None, max_completion_tokens=10**6))
    assert response.json()["error"]["param"] == "max_completion_tokens"
    response = _post(url, "/api/show", {})
    assert response.status_code == 400 and "model" in response.json()["error"] and "''" not in response.text


def test_lone_surrogates_are_refused_naming_the_field(url):
    body = '{"model": "tiny-edge", "messages": [{"role": "user", "content": "hi \\ud800"}]}'
    response = _post(url, "/v1/chat/completions", body, {"Content-Type": "application/json"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "messages[0].content"
    paired = '{"model": "tiny-edge", "messages": [{"role": "user", "content": "\\ud83d\\ude00"}], "max_tokens": 1}'
    assert _post(url, "/v1/chat/completions", paired).status_code == 200


def test_api_show_hides_the_models_path(url, tiny_home):
    shown = _post(url, "/api/show", {"model": "tiny-edge"}).json()
    assert str(tiny_home) not in json.dumps(shown) and shown["modelfile"] == "FROM tiny-edge"


# -- secrets on the command line
def test_api_key_file_and_the_command_line_warning(tiny_home):
    key_file = tiny_home / "key.txt"
    key_file.write_text("s3cret-key\n")
    with server_process(
        str(tiny_home / "tiny-edge.gguf"), "--ctx", "64", "--api-key-file", str(key_file), home=tiny_home
    ) as server:
        assert httpx.get(f"{server.url}/v1/models", timeout=QUICK).status_code == 401
        good = httpx.get(f"{server.url}/v1/models", headers={"Authorization": "Bearer s3cret-key"}, timeout=QUICK)
        assert good.status_code == 200
    with server_process(
        str(tiny_home / "tiny-edge.gguf"), "--ctx", "64", "--api-key", "visible", home=tiny_home
    ) as server:
        server.process.terminate()
        output = server.process.communicate(timeout=30)[0]
    assert "warning: --api-key is visible" in output


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (("--api-key-file", "/nonexistent/key"), "--api-key-file /nonexistent/key: cannot be read"),
        (("--read-timeout", "0"), "--read-timeout must be a positive"),
        (("--port", "70000"), "--port must be in 1..65535"),
    ],
)
def test_bad_serve_flags_fail_before_loading(tiny_home, arguments, message):
    result = subprocess.run(
        [sys.executable, "-m", "qwq.cli.main", "serve", str(tiny_home / "missing.gguf"), *arguments],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1 and message in result.stderr and "Traceback" not in result.stderr


def test_a_busy_port_is_reported_before_loading(url, tiny_home):
    result = subprocess.run(
        [sys.executable, "-m", "qwq.cli.main", "serve", str(tiny_home / "missing.gguf"), "--port", str(_port(url))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1 and f"cannot listen on 127.0.0.1:{_port(url)}" in result.stderr


# -- the kept corpus of bad requests: each gets its status and names its field, and the server stays healthy
CORPUS = Path(__file__).resolve().parents[1] / "data" / "bad_requests" / "corpus.jsonl"


def _corpus_request(url: str, case: dict) -> httpx.Response:
    headers = {key: url if value == "SELF" else value for key, value in case.get("headers", {}).items()}
    if "raw" in case:
        content = case["raw"].encode("utf-8", "surrogateescape")  # \udcXX carries a raw, invalid byte
    elif "repeat" in case:
        content = b"{" + b" " * case["repeat"] + b"}"
    else:
        body = dict(case["body"])
        body.update({key: "x" * count for key, count in case.get("fill", {}).items()})
        content = json.dumps(body).encode()
    headers.setdefault("Content-Type", "application/json")
    return httpx.post(f"{url}{case['path']}", content=content, headers=headers, timeout=QUICK)


def test_bad_request_corpus(url):
    cases = [json.loads(line) for line in CORPUS.read_text(encoding="utf-8").splitlines()]
    assert len(cases) >= 100
    problems = []
    for case in cases:
        response = _corpus_request(url, case)
        got = response.json() if response.headers.get("content-type") == "application/json" else None
        if response.status_code != case["status"] or got is None:
            problems.append(f"{case['id']}: {response.status_code} {response.text[:200]!r}, expected {case['status']}")
            continue
        error = got["error"]
        message = error["message"] if isinstance(error, dict) else error
        if case["path"].startswith("/v1"):
            named = error.get("param")
            if case["field"] is not None and named != case["field"]:
                problems.append(f"{case['id']}: param {named!r}, expected {case['field']!r} ({message})")
        elif case["field"] is not None and case["field"] not in message:
            problems.append(f"{case['id']}: {message!r} does not name {case['field']!r}")
        if case.get("contains") and case["contains"] not in message:
            problems.append(f"{case['id']}: {message!r} does not say {case['contains']!r}")
        if "Traceback" in message or "max_new_tokens" in message:
            problems.append(f"{case['id']}: internal detail in {message!r}")
    assert not problems, "\n".join(problems)
    assert httpx.get(f"{url}/health", timeout=QUICK).json() == {**httpx.get(f"{url}/health").json(), "running": 0}
    good = _post(url, "/v1/chat/completions", _chat())
    assert good.status_code == 200 and good.json()["choices"][0]["finish_reason"] in ("stop", "length")


# -- routes: unknown ones are 404 in the dialect, a known one asked with the wrong method 405
def test_unknown_routes_are_json_404_and_wrong_methods_405(url):
    for method, path in (("POST", "/api/embed"), ("POST", "/api/push"), ("POST", "/foo"), ("DELETE", "/api/x")):
        response = httpx.request(method, f"{url}{path}", json={}, timeout=QUICK)
        assert response.status_code == 404 and f"no route {method} {path}" in response.json()["error"], path
    for path in ("/v1/embeddings", "/v1/responses"):
        response = httpx.post(f"{url}{path}", json={}, timeout=QUICK)
        assert response.status_code == 404 and response.json()["error"]["message"].startswith("no route"), path
    wrong = httpx.get(f"{url}/v1/chat/completions", timeout=QUICK)
    assert wrong.status_code == 405 and "takes POST" in wrong.json()["error"]["message"]
    assert httpx.get(f"{url}/openapi.json", timeout=QUICK).json()["info"]["title"] == "qwq"


def test_one_model_by_id(url):
    assert httpx.get(f"{url}/v1/models/tiny-edge", timeout=QUICK).json()["id"] == "tiny-edge"
    missing = httpx.get(f"{url}/v1/models/gpt-4", timeout=QUICK)
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "model"
