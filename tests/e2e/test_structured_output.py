"""Structured output through `qwq serve` with the real 0.5B model and the official clients: OpenAI's
`response_format` (json_schema on 20 prompts, greedy and seeded sampling; json_object) and Ollama's `format`
("json" and a schema). Every reply parses and validates with jsonschema; a schema that cannot be enforced is
refused under the client's field name. The server is the package's plain one (tests/e2e/conftest.py)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import ollama
import openai
import pytest

MODEL = "qwen2.5-coder:0.5b"
CITY = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 24}, "country": {"type": "string", "maxLength": 24}},
    "required": ["city", "country"],
    "additionalProperties": False,
}
NUMBER = {
    "type": "object",
    "properties": {"answer": {"type": "integer"}},
    "required": ["answer"],
    "additionalProperties": False,
}
COLOR = {
    "type": "object",
    "properties": {"color": {"enum": ["red", "green", "blue", "yellow"]}, "sure": {"type": "boolean"}},
    "required": ["color", "sure"],
    "additionalProperties": False,
}
LIST = {
    "type": "object",
    "properties": {"items": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3}},
    "required": ["items"],
    "additionalProperties": False,
}
PROMPTS = [
    ("Which city is the capital of France?", CITY),
    ("Name the capital of Japan.", CITY),
    ("Where is the Colosseum?", CITY),
    ("Which city hosts the Golden Gate Bridge?", CITY),
    ("Name a large city in Brazil.", CITY),
    ("What is 7 times 6?", NUMBER),
    ("How many legs does a spider have?", NUMBER),
    ("What is 100 minus 58?", NUMBER),
    ("How many days are in a week?", NUMBER),
    ("What is 2 to the power 5?", NUMBER),
    ("What colour is the sky on a clear day?", COLOR),
    ("What colour is grass?", COLOR),
    ("What colour is a ripe banana?", COLOR),
    ("What colour is a fire truck?", COLOR),
    ("What colour do you get mixing blue and yellow?", COLOR),
    ("List three fruits.", LIST),
    ("List two programming languages.", LIST),
    ("List three planets.", LIST),
    ("List three animals that can fly.", LIST),
    ("List two primary colours.", LIST),
]


@pytest.fixture(scope="module")
def server(plain_server):
    return plain_server


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=300)


def schema_format(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}


def ask(client, question: str, response_format: dict, **sampling):
    reply = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": f"{question} Answer in JSON."}],
        response_format=response_format,
        max_tokens=64,
        **sampling,
    )
    return reply.choices[0]


@pytest.mark.parametrize("sampling", [{"temperature": 0}, {"temperature": 0.8, "seed": 7}], ids=["greedy", "sampled"])
def test_openai_json_schema_on_20_prompts(client, sampling):
    with ThreadPoolExecutor(8) as pool:
        choices = list(pool.map(lambda p: ask(client, p[0], schema_format(p[1]), **sampling), PROMPTS))
    for (question, schema), choice in zip(PROMPTS, choices, strict=True):
        assert choice.finish_reason == "stop", (question, choice.message.content)
        jsonschema.validate(json.loads(choice.message.content), schema)


def test_openai_json_object_and_stream(client):
    choice = ask(client, "Describe a cat with its name and age.", {"type": "json_object"}, temperature=0)
    assert isinstance(json.loads(choice.message.content), dict)
    chunks = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "What is 7 times 6? Answer in JSON."}],
        response_format=schema_format(NUMBER),
        max_tokens=64,
        temperature=0,
        stream=True,
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    jsonschema.validate(json.loads(text), NUMBER)


def test_openai_refuses_a_schema_by_name(client):
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, "Hi.", schema_format({"type": "nope"}))
    assert caught.value.body["param"] == "response_format.json_schema.schema"


def test_ollama_format_json_and_schema(server):
    ollama_client = ollama.Client(host=server)
    options = {"temperature": 0, "num_predict": 64}
    question = [{"role": "user", "content": "Which city is the capital of Italy? Answer in JSON."}]
    reply = ollama_client.chat(model=MODEL, messages=question, format="json", options=options, stream=False)
    assert isinstance(json.loads(reply.message.content), dict)
    reply = ollama_client.chat(model=MODEL, messages=question, format=CITY, options=options, stream=False)
    jsonschema.validate(json.loads(reply.message.content), CITY)
    generated = ollama_client.generate(
        model=MODEL, prompt="What colour is snow? Answer in JSON.", format=COLOR, options=options, stream=False
    )
    jsonschema.validate(json.loads(generated.response), COLOR)
    with pytest.raises(ollama.ResponseError) as caught:
        ollama_client.chat(model=MODEL, messages=question, format={"type": "nope"}, options=options, stream=False)
    assert "format" in str(caught.value)
