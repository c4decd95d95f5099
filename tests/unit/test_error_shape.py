"""The server's one error shape, below the HTTP tests: names renamed into the client's, field paths read from
pydantic's locations, and the last net that turns a bug into a JSON 500 in the route's dialect."""

from __future__ import annotations

import logging

import pytest
from fastapi.testclient import TestClient

import qwq
from qwq.engine.background import EngineThread
from qwq.engine.engine import Engine
from qwq.errors import ContextLengthError, InvalidRequestError
from qwq.server.app import _field_path, create_app
from qwq.server.error_shape import client_names
from qwq.server.service import Service

from tiny_checkpoints import write_gguf


def test_client_names_rename_the_field_and_the_message():
    with pytest.raises(InvalidRequestError) as caught, client_names({"max_tokens": "options.num_predict"}):
        raise InvalidRequestError("max_tokens must be an integer >= 1, got 0", field="max_tokens")
    assert caught.value.field == "options.num_predict"
    assert str(caught.value) == "options.num_predict must be an integer >= 1, got 0"
    with pytest.raises(ContextLengthError) as caught, client_names({"prompt": "messages"}):
        raise ContextLengthError("the prompt (9 tokens) leaves no room", field="prompt")
    assert caught.value.field == "messages"  # prose keeps its words; the field is named in front
    assert str(caught.value) == "messages: the prompt (9 tokens) leaves no room"
    with pytest.raises(InvalidRequestError) as caught, client_names({"top_p": "options.top_p"}):
        raise InvalidRequestError("temperature must be finite", field="temperature")
    assert caught.value.field == "temperature"


@pytest.mark.parametrize(
    ("location", "body", "missing", "path"),
    [
        (("messages", 1, "content", "str"), {"messages": [{}, {"content": {"a": 1}}]}, False, "messages[1].content"),
        (("messages", 0, "role"), {"messages": [{"content": "x"}]}, True, "messages[0].role"),
        (("think", "bool"), {"think": "maybe"}, False, "think"),
        (("options", "num_predict"), {"options": {"num_predict": "5"}}, False, "options.num_predict"),
        (("model",), {}, True, "model"),
    ],
)
def test_field_paths_follow_the_body_as_sent(location, body, missing, path):
    assert _field_path(location, body, missing) == path


def test_an_unexpected_exception_is_a_json_500_in_the_routes_dialect(tmp_path):
    model = qwq.load(write_gguf(tmp_path / "tiny.gguf", context=128))
    engine = EngineThread(Engine(model.network, model.tokenizer, 128, max_batch=1))
    app = create_app(Service(model, engine, "tiny"))

    def boom() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/v1/boom", boom)
    app.add_api_route("/api/boom", boom)
    app.router.routes[:0] = [app.router.routes.pop(), app.router.routes.pop()]  # before the page's mount
    client = TestClient(app, raise_server_exceptions=False, base_url="http://127.0.0.1")
    logging.getLogger("qwq.server.app").disabled = True
    try:
        openai_shaped, ollama_shaped = client.get("/v1/boom"), client.get("/api/boom")
    finally:
        logging.getLogger("qwq.server.app").disabled = False
        engine.close()
    assert openai_shaped.status_code == ollama_shaped.status_code == 500
    assert openai_shaped.json()["error"]["type"] == "server_error" and "RuntimeError" in openai_shaped.text
    assert ollama_shaped.json() == {"error": "internal server error (RuntimeError); the server log has the details"}
    assert "a bug" not in openai_shaped.text + ollama_shaped.text
