"""The one error shape of `qwq serve`, in the dialect of the route that failed: OpenAI's error object on /v1,
Ollama's `{"error": "..."}` everywhere else. Every refusal — a route's, a middleware's, the connection
layer's — is built here, so no client ever gets text/plain or a traceback."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from fastapi.responses import JSONResponse

from qwq.errors import QwqError

RETRY_AFTER_S = "2"


def error_body(
    path: str,
    status: int,
    message: str,
    field: str | None = None,
    kind: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    if path.startswith("/v1"):
        error_type = kind or ("invalid_request_error" if status < 500 else "server_error")
        return {"error": {"message": message, "type": error_type, "param": field, "code": code}}
    return {"error": message}


def error_response(
    path: str,
    status: int,
    message: str,
    field: str | None = None,
    kind: str | None = None,
    code: str | None = None,
) -> JSONResponse:
    headers = {"Retry-After": RETRY_AFTER_S} if status in (429, 503) else None
    return JSONResponse(error_body(path, status, message, field, kind, code), status_code=status, headers=headers)


def error_bytes(path: str, status: int, message: str) -> bytes:
    """The body of an error answered below the app (the connection layer), as bytes."""
    return json.dumps(error_body(path, status, message)).encode()


@contextmanager
def client_names(names: Mapping[str, str]) -> Iterator[None]:
    """Errors raised inside (by the one request type, which has its own field names) come out under the
    names the client used: Ollama's `options.num_predict` for `max_tokens`, the route's `messages` for the
    prompt (the field renamed; the message too where it names the field by its identifier)."""
    try:
        yield
    except QwqError as exc:
        name = names.get(exc.field or "")
        if name is None:
            raise
        message = str(exc)
        # an identifier (max_tokens) or the same name qualified (seed -> options.seed); not a word that prose
        # uses too ("the prompt" stays, while its field becomes "messages")
        if "_" in exc.field or name.endswith(f".{exc.field}"):
            message = re.sub(rf"(?<![\w.]){re.escape(exc.field)}(?!\w)", name, message)
        if name not in message:  # say which field, as a validation error does ("messages: ...")
            message = f"{name}: {message}"
        renamed = type(exc)(message, field=name)
        raise renamed from None
