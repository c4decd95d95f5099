"""The HTTP server of `qwq serve`: one model loaded once, shared by the OpenAI and Ollama dialects through
the batching engine; loopback by default, optional API key, request size limit, CORS only when asked."""

from __future__ import annotations

import json
import logging
import secrets
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from qwq.errors import QwqError, ServerBusyError
from qwq.server import ollama_routes, openai_routes, web_routes
from qwq.server.service import Service

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 4 << 20  # 4 MiB: far above any prompt that fits a 32k context
RETRY_AFTER_S = "2"
_GUARDED_PREFIXES = ("/v1", "/api", "/ui")  # every API route; the page's static files and /health stay open


def _error(
    request: Request,
    status: int,
    message: str,
    field: str | None = None,
    kind: str | None = None,
    code: str | None = None,
) -> JSONResponse:
    """OpenAI's error object on /v1, Ollama's {"error": ...} elsewhere."""
    headers = {"Retry-After": RETRY_AFTER_S} if status in (429, 503) else None
    if request.url.path.startswith("/v1"):
        error_type = kind or ("invalid_request_error" if status < 500 else "server_error")
        body: dict[str, Any] = {"error": {"message": message, "type": error_type, "param": field, "code": code}}
    else:
        body = {"error": message}
    return JSONResponse(body, status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    first = exc.errors()[0]
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    field = ".".join(location) or None
    if first.get("type") == "json_invalid":
        return f"request body is not valid JSON: {first.get('msg')}", None
    return f"{field or 'body'}: {first.get('msg')}", field


class _BodyLimit:
    """Pure ASGI middleware: refuse bodies larger than `limit` bytes, declared or streamed; read every POST
    body as JSON."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if scope["method"] == "POST" and b"json" not in headers.get(b"content-type", b""):
            # ollama reads every body as JSON whatever its content type (curl -d sends a form type)
            scope = {
                **scope,
                "headers": [
                    *((k, v) for k, v in scope["headers"] if k != b"content-type"),
                    (b"content-type", b"application/json"),
                ],
            }
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(scope, send)
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooLarge
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _TooLarge:
            await self._refuse(scope, send)

    async def _refuse(self, scope, send) -> None:
        path = scope.get("path", "")
        message = f"request body exceeds {self.limit} bytes"
        body = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}
        payload = json.dumps(body if path.startswith("/v1") else {"error": message}).encode()
        await send({"type": "http.response.start", "status": 413, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": payload})


class _TooLarge(Exception):
    pass


class _RequireKey:
    """Pure ASGI middleware: the API routes need `Authorization: Bearer KEY`. (Not Starlette's
    `@app.middleware`, whose wrapper hides a client's disconnect from the routes behind it.)"""

    def __init__(self, app, api_key: str) -> None:
        self.app, self.expected = app, f"Bearer {api_key}".encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not scope.get("path", "").startswith(_GUARDED_PREFIXES):
            return await self.app(scope, receive, send)
        given = dict(scope["headers"]).get(b"authorization", b"")
        if secrets.compare_digest(given, self.expected):
            return await self.app(scope, receive, send)
        response = _error(
            Request(scope),
            401,
            "missing or wrong API key (send 'Authorization: Bearer KEY')",
            kind="authentication_error",
        )
        await response(scope, receive, send)


# the page loads only its own files; images only from itself or data: URLs (a model's remote image link is
# drawn as a link, never fetched); nothing may frame it
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)


class _SecurityHeaders:
    """Pure ASGI middleware: every response carries the page's Content-Security-Policy and nosniff."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *message.get("headers", []),
                    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
                    (b"x-content-type-options", b"nosniff"),
                ]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(
    service: Service, api_key: str | None = None, cors_origins: list[str] | None = None, max_body: int = MAX_BODY_BYTES
) -> FastAPI:
    app = FastAPI(title="qwq", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    app.state.model_names = {service.name, *service.aliases}

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, field = _validation_message(exc)
        return _error(request, 400, message, field)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 400 and "parsing the body" in detail:
            detail = "request body is not valid JSON (or not UTF-8)"
        return _error(request, exc.status_code, detail)

    @app.exception_handler(QwqError)
    async def refused(request: Request, exc: QwqError) -> JSONResponse:
        field = exc.field
        if field is None and ":" in str(exc) and " " not in str(exc).split(":", 1)[0]:
            field = str(exc).split(":", 1)[0]
        kind = "model_not_found" if exc.http_status == 404 else None
        if isinstance(exc, ServerBusyError):
            return _error(request, 503, str(exc), kind="server_busy")
        return _error(request, exc.http_status, str(exc), field, kind, exc.code)

    @app.get("/health")
    def health() -> dict[str, Any]:
        running, waiting = service.engine.load
        return {"status": "ok", "model": service.name, "running": running, "waiting": waiting}

    app.include_router(openai_routes.router)
    app.include_router(ollama_routes.router)
    app.include_router(web_routes.router)
    app.mount("/", web_routes.static_files(), name="web")
    if api_key:
        app.add_middleware(_RequireKey, api_key=api_key)
    if cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=cors_origins, allow_methods=["*"], allow_headers=["*"])
    app.add_middleware(_BodyLimit, limit=max_body)
    app.add_middleware(_SecurityHeaders)
    return app
