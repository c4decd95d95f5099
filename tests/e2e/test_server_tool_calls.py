"""Tool calling through `qwq serve` with the official `openai` and `ollama` clients and the real 0.5B: calls with
parsed JSON arguments (streamed too), the tool result's round trip, tool_choice forcing or forbidding a call.
The server is the package's plain one (tests/e2e/conftest.py)."""

from __future__ import annotations

import json

import ollama
import openai
import pytest

MODEL = "qwen2.5-coder:0.5b"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "The city's name"}},
            "required": ["city"],
        },
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris? Use the tool."}]


@pytest.fixture(scope="module")
def server(plain_server):
    return plain_server


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=300)


def _chat(client, messages, **kw):
    return client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=80, **kw)


def test_openai_tool_call_streamed_and_round_trip(client):
    reply = _chat(client, ASK, tools=[WEATHER])
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_") and call.function.name == "get_weather"
    assert "paris" in json.loads(call.function.arguments)["city"].lower()

    chunks = list(_chat(client, ASK, tools=[WEATHER], stream=True))
    deltas = [d for c in chunks for d in c.choices[0].delta.tool_calls or []]
    assert [d.index for d in deltas] == [0] and deltas[0].function.name == "get_weather"
    assert json.loads(deltas[0].function.arguments) == json.loads(call.function.arguments)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"

    result = {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature_c": 21, "sky": "sunny"})}
    history = [*ASK, choice.message.model_dump(exclude_none=True), result]
    answer = _chat(client, history, tools=[WEATHER]).choices[0]
    assert answer.finish_reason == "stop" and not answer.message.tool_calls
    assert "21" in answer.message.content


def test_tool_choice_forces_or_forbids_a_call(client):
    hello = [{"role": "user", "content": "Say hello."}]
    named = {"type": "function", "function": {"name": "get_weather"}}
    for tool_choice in ("required", named):
        choice = _chat(client, hello, tools=[WEATHER], tool_choice=tool_choice).choices[0]
        (call,) = choice.message.tool_calls
        assert call.function.name == "get_weather" and isinstance(json.loads(call.function.arguments)["city"], str)
        assert choice.finish_reason == "tool_calls"
    forbidden = _chat(client, ASK, tools=[WEATHER], tool_choice="none").choices[0]
    assert forbidden.message.tool_calls is None and forbidden.message.content
    assert "<tool_call>" not in forbidden.message.content and forbidden.finish_reason in ("stop", "length")


def test_bad_tools_are_refused_naming_the_field(client):
    nameless = {"type": "function", "function": {"description": "no name"}}
    with pytest.raises(openai.BadRequestError) as caught:
        _chat(client, ASK, tools=[nameless])
    assert caught.value.body["param"] == "tools[0].function.name"
    not_object = {"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}
    with pytest.raises(openai.BadRequestError) as caught:
        _chat(client, ASK, tools=[not_object])
    assert caught.value.body["param"] == "tools[0].function.parameters"
    with pytest.raises(openai.BadRequestError) as caught:
        _chat(client, ASK, tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "nope"}})
    assert caught.value.body["param"] == "tool_choice"


def test_ollama_client_with_tools(server):
    client = ollama.Client(host=server, timeout=300)
    options = {"temperature": 0, "num_predict": 80}
    reply = client.chat(model=MODEL, messages=ASK, tools=[WEATHER], options=options)
    (call,) = reply.message.tool_calls
    assert call.function.name == "get_weather" and "paris" in call.function.arguments["city"].lower()

    streamed = [
        c
        for part in client.chat(model=MODEL, messages=ASK, tools=[WEATHER], options=options, stream=True)
        for c in part.message.tool_calls or []
    ]
    assert [(c.function.name, c.function.arguments) for c in streamed] == [("get_weather", call.function.arguments)]

    result = {"role": "tool", "content": json.dumps({"temperature_c": 21}), "tool_name": "get_weather"}
    history = [*ASK, reply.message, result]
    answer = client.chat(model=MODEL, messages=history, tools=[WEATHER], options=options)
    assert not answer.message.tool_calls and "21" in answer.message.content
