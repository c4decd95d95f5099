"""A bounded, seeded fuzz run of `qwq serve` over its own OpenAPI document (issue 17): for every POST route,
bodies drawn from the route's request schema (hypothesis-jsonschema), the same with one field replaced by
arbitrary JSON, arbitrary JSON documents and raw bytes. No answer may be a 5xx or other than JSON (streams are
read to their end), no call may hang (a client timeout fails it), and the server must be healthy after it.

A tiny random checkpoint serves, with small token budgets forced into generating bodies, so the whole run
stays under two minutes on two cores.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

from cli_process import server_process
from tiny_checkpoints import write_gguf

NAME = "tiny-fuzz"
TIMEOUT = 30  # no call may take longer, streams included
EXAMPLES = 35  # per route and strategy; the run's total stays under two minutes here
BUDGET_KEYS = (
    "max_tokens",
    "max_completion_tokens",
    "thinking_token_budget",
    "min_thinking_tokens",
    "max_answer_tokens",
)
OUTCOMES: Counter[tuple[str, int]] = Counter()

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    home = tmp_path_factory.mktemp("fuzz-home")
    write_gguf(home / f"{NAME}.gguf", context=512)
    with server_process(str(home / f"{NAME}.gguf"), "--ctx", "256", "--max-batch", "4", home=home) as server:
        yield server.url
    print("\nfuzz outcomes (route, status): count")
    for (route, status), count in sorted(OUTCOMES.items()):
        print(f"  {route} {status}: {count}")


@pytest.fixture(scope="module")
def schemas(url) -> dict[str, dict[str, Any]]:
    """Each POST route's request body schema, its $refs resolved into one self-contained document."""
    document = httpx.get(f"{url}/openapi.json", timeout=TIMEOUT).json()
    components = document["components"]["schemas"]
    routes = {}
    for path, operations in document["paths"].items():
        if "post" in operations:
            reference = operations["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
            schema = dict(components[reference.rsplit("/", 1)[1]])
            schema["$defs"] = components
            routes[path] = json.loads(json.dumps(schema).replace("#/components/schemas/", "#/$defs/"))
    assert {"/v1/chat/completions", "/v1/completions", "/api/chat", "/api/generate"} <= set(routes)
    return routes


def _bounded(body: Any, served: bool) -> Any:
    """A drawn body with the served model's name (most of the time) and small budgets, so it generates little."""
    if not isinstance(body, dict):
        return body
    body = dict(body)
    if served and "model" in body:
        body["model"] = NAME
    for key in BUDGET_KEYS:
        if isinstance(body.get(key), int) and not isinstance(body[key], bool):
            body[key] = max(-1, min(body[key], 4))
    if isinstance(body.get("n"), int) and not isinstance(body["n"], bool):
        body["n"] = min(body["n"], 2)
    options = body.get("options")
    if isinstance(options, dict):
        body["options"] = {**options, "num_predict": min(options.get("num_predict") or 4, 4)}
        if isinstance(options.get("think_budget"), int):
            body["options"]["think_budget"] = min(options["think_budget"], 4)
    elif "messages" in body or "prompt" in body:
        body.setdefault("max_tokens", 4)
        body.setdefault("options", {"num_predict": 4})
    return body


def _send(url: str, path: str, content: bytes) -> None:
    started = time.monotonic()
    with httpx.stream(
        "POST", f"{url}{path}", content=content, headers={"Content-Type": "application/json"}, timeout=TIMEOUT
    ) as response:
        body = b"".join(response.iter_bytes())
    OUTCOMES[(path, response.status_code)] += 1
    assert time.monotonic() - started < TIMEOUT
    assert response.status_code < 500, (path, content[:300], body[:300])
    kind = response.headers.get("content-type", "")
    if response.status_code >= 400:
        assert kind == "application/json", (path, content[:300], body[:300])
        error = json.loads(body)["error"]
        assert error if isinstance(error, str) else error["message"]
    else:
        assert kind.split(";")[0] in ("application/json", "text/event-stream", "application/x-ndjson")
        if kind.startswith("text/event-stream"):
            assert body.rstrip().endswith(b"data: [DONE]"), body[-300:]


FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/api/chat", "/api/generate", "/api/show"])
def test_schema_shaped_bodies(url, schemas, path):
    @FUZZ_SETTINGS
    @given(body=from_schema(schemas[path]), served=st.booleans())
    def run(body, served):
        _send(url, path, json.dumps(_bounded(body, served)).encode())

    run()


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat", "/api/generate", "/ui/render"])
def test_one_field_replaced_by_anything(url, schemas, path):
    @FUZZ_SETTINGS
    @given(body=from_schema(schemas[path]), value=json_values, data=st.data())
    def run(body, value, data):
        body = _bounded(body, True)
        if isinstance(body, dict) and body:
            key = data.draw(st.sampled_from(sorted(body)))
            body[key] = value
        _send(url, path, json.dumps(_bounded(body, True)).encode())

    run()


def test_arbitrary_documents_and_bytes(url, schemas):
    @FUZZ_SETTINGS
    @given(
        path=st.sampled_from(sorted(schemas)), document=json_values, raw=st.binary(max_size=64), use_raw=st.booleans()
    )
    def run(path, document, raw, use_raw):
        _send(url, path, raw if use_raw else json.dumps(document).encode())

    run()


def test_the_server_is_healthy_after_the_fuzz(url):
    deadline = time.monotonic() + 30
    while (health := httpx.get(f"{url}/health", timeout=TIMEOUT).json())["running"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert health["status"] == "ok" and health["running"] == 0 and health["waiting"] == 0
    body = {"model": NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "temperature": 0}
    first = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=TIMEOUT).json()
    second = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=TIMEOUT).json()
    assert first["choices"][0]["message"] == second["choices"][0]["message"]
