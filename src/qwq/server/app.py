"""The HTTP server of `qwq serve`: the models it serves by name (loaded on first use, see registry.py), shared
by the OpenAI and Ollama dialects through each model's batching engine; /health and Prometheus /metrics;
loopback by default, optional API key, request size limit, CORS only when asked."""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from qwq import __version__
from qwq.errors import QwqError, ServerBusyError
from qwq.server import ollama_models, ollama_routes, openai_routes, web_routes
from qwq.server.edge import BrowserGuard, ReadBody, RequireKey, SecurityHeaders
from qwq.server.error_shape import error_response
from qwq.server.metrics import CONTENT_TYPE, CountRequests
from qwq.server.registry import ModelRegistry
from qwq.server.service import Service
from qwq.server.web_routes import STATIC_DIR

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 4 << 20  # 4 MiB: far above any prompt that fits a 32k context
BODY_TIMEOUT_S = 30.0  # each chunk of a request body must arrive within this (a stalled upload gets 408)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    first = exc.errors()[0]
    if first.get("type") == "json_invalid":
        return f"request body is not valid JSON: {first.get('msg')}", None
    if first.get("type") == "missing" and tuple(first.get("loc", ())) == ("body",):
        return "the request body is empty: send a JSON object", None
    field = _field_path(first.get("loc", ())[1:], exc.body, missing=first.get("type") == "missing")
    return f"{field or 'body'}: {first.get('msg')}", field


def _field_path(location: tuple, body: Any, missing: bool) -> str | None:
    """The client's field path ("messages[0].content") from a validation error's location, dropping the
    parts pydantic adds for the members of a union ("bool", "literal[...]"): a part is kept only while it is
    a key or index of the body as sent (or, for a missing field, the last part)."""
    path, value, last = "", body, len(location) - 1
    for index, part in enumerate(location):
        if isinstance(value, list) and isinstance(part, int) and 0 <= part < len(value):
            path, value = f"{path}[{part}]", value[part]
        elif isinstance(value, dict) and isinstance(part, str) and (part in value or missing and index == last):
            path = f"{path}.{part}" if path else part
            value = value.get(part)
        else:
            break
    return path or None


def _exists(path: str) -> bool:
    """The page or one of its files (never a file outside the page's folder)."""
    file = (STATIC_DIR / path.lstrip("/")).resolve()
    return file == STATIC_DIR.resolve() or file.is_relative_to(STATIC_DIR.resolve()) and file.is_file()


def create_app(
    models: ModelRegistry | Service,
    api_key: str | None = None,
    cors_origins: list[str] | None = None,
    max_body: int = MAX_BODY_BYTES,
    *,
    bound_host: str = "127.0.0.1",
    allowed_hosts: list[str] | None = None,
    body_timeout: float = BODY_TIMEOUT_S,
) -> FastAPI:
    """The app serving `models` (a Service: that one model, kept loaded), its routes behind the edge
    (outermost first): the request counter, security headers, the browser guard (Host and Origin), the body
    reader (size, time, Unicode), CORS for the allowed origins, the API key."""
    app = FastAPI(title="qwq", version=__version__, docs_url=None, redoc_url=None, openapi_url="/openapi.json")
    if isinstance(models, Service):
        models = ModelRegistry.holding(models)
    metrics = models.metrics
    metrics.watch(models.queues)
    app.state.models = models

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, field = _validation_message(exc)
        return error_response(request.url.path, 400, message, field)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        path = request.url.path
        methods = request.app.openapi()["paths"].get(path, {})
        if methods and request.method.lower() not in methods:
            allowed = ", ".join(sorted(method.upper() for method in methods))
            return error_response(path, 405, f"{request.method} {path}: this route takes {allowed}")
        if exc.status_code in (404, 405) and not _exists(path):
            # the page's mount answers every unknown path: 405 for a POST it cannot take; the truth is 404
            message = f"no route {request.method} {path}: the OpenAI API is under /v1, Ollama's under /api"
            return error_response(path, 404, message)
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 400 and "parsing the body" in detail:
            detail = "request body is not valid JSON (or not UTF-8)"
        return error_response(request.url.path, exc.status_code, detail)

    @app.exception_handler(QwqError)
    async def refused(request: Request, exc: QwqError) -> JSONResponse:
        field = exc.field
        if field is None and ":" in str(exc) and " " not in str(exc).split(":", 1)[0]:
            field = str(exc).split(":", 1)[0]
        kind = "model_not_found" if exc.http_status == 404 else None
        if isinstance(exc, ServerBusyError):
            return error_response(request.url.path, 503, str(exc), kind="server_busy")
        return error_response(request.url.path, exc.http_status, str(exc), field, kind, exc.code)

    @app.exception_handler(Exception)
    async def failed(request: Request, exc: Exception) -> JSONResponse:
        """The last net: a bug answers a JSON 500 naming the error's kind, never text/plain or a traceback."""
        logger.exception("internal error on %s %s", request.method, request.url.path)
        message = f"internal server error ({type(exc).__name__}); the server log has the details"
        return error_response(request.url.path, 500, message)

    @app.get("/health")
    def health() -> dict[str, Any]:
        queues = models.queues()
        running, waiting = sum(q[1] for q in queues), sum(q[2] for q in queues)
        return {"status": "ok", "models": [q[0] for q in queues], "running": running, "waiting": waiting}

    @app.get("/metrics")
    def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    app.include_router(openai_routes.router)
    app.include_router(ollama_routes.router)
    app.include_router(ollama_models.router)
    app.include_router(web_routes.router)
    app.mount("/", web_routes.static_files(), name="web")
    if api_key:
        app.add_middleware(RequireKey, api_key=api_key)
    if cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=cors_origins, allow_methods=["*"], allow_headers=["*"])
    app.add_middleware(ReadBody, limit=max_body, timeout=body_timeout)
    app.add_middleware(
        BrowserGuard, bound_host=bound_host, allowed_hosts=allowed_hosts or (), cors_origins=cors_origins or ()
    )
    app.add_middleware(SecurityHeaders)
    app.add_middleware(CountRequests, metrics=metrics, routes=lambda: set(app.openapi()["paths"]))
    return app
