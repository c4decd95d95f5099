"""The server's edge: pure ASGI middlewares that every request passes before a route sees it.

- `BrowserGuard` keeps web pages from driving the server: a `Host` that is not this machine (DNS rebinding)
  and a cross-origin `Origin` not allowed by `--cors-origin` are refused, and a POST that carries an `Origin`
  must say it is JSON (a browser sends `text/plain` cross-site without asking first). Clients that send no
  `Origin` (curl, the official SDKs) are untouched, as ollama does.
- `ReadBody` reads a request's whole body before the app does: at most `limit` bytes whatever the transfer
  encoding (413), each chunk within `timeout` seconds (408), text that is valid Unicode (a lone surrogate is
  400 naming the JSON field); then the app reads it as JSON whatever its content type (as ollama does).
- `RequireKey` asks for the bearer key on the API routes; `SecurityHeaders` adds the page's CSP to every reply.
(Pure ASGI, not Starlette's `@app.middleware`, whose wrapper hides a client's disconnect from the routes.)
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import secrets
import socket
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from qwq.server.error_shape import error_bytes, error_response

GUARDED_PREFIXES = ("/v1", "/api", "/ui")  # every API route; the page's static files and /health stay open
_BODY_METHODS = ("POST", "PUT", "PATCH")
_SURROGATE = re.compile("[\ud800-\udfff]")
_DEFAULT_PORTS = {"http": 80, "https": 443}

# the page loads only its own files; images only from itself or data: URLs (a model's remote image link is
# drawn as a link, never fetched); nothing may frame it
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)


async def _refuse(send, path: str, status: int, message: str, close: bool = False) -> None:
    body = error_bytes(path, status, message)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _split_host(host: str) -> tuple[str, int | None]:
    """('name or address', port) from a Host header value ("[::1]:8080", "localhost", "127.0.0.1:11435")."""
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        port = rest.removeprefix(":")
    else:
        name, _, port = host.partition(":") if host.count(":") == 1 else (host, "", "")
    return name.lower().rstrip("."), int(port) if port.isdigit() else None


class BrowserGuard:
    def __init__(self, app, bound_host: str, allowed_hosts: Iterable[str] = (), cors_origins: Iterable[str] = ()):
        self.app = app
        self.bound = bound_host.strip("[]").lower()
        self.allowed_hosts = {h.lower().rstrip(".") for h in allowed_hosts}
        self.cors_origins = {o.rstrip("/") for o in cors_origins}
        self.machine = socket.gethostname().lower()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        path = scope.get("path", "")
        host = headers.get(b"host", b"").decode("latin-1")
        if host and not self._host_allowed(host):
            message = (
                f"Host {host!r} is not this server's name: refused (a guard against DNS rebinding); "
                "start the server with --allowed-host NAME to serve under another name"
            )
            return await _refuse(send, path, 403, message)
        origin = headers.get(b"origin")
        if origin is not None and (scope["method"] in _BODY_METHODS or path.startswith(GUARDED_PREFIXES)):
            origin_text = origin.decode("latin-1").rstrip("/")
            if not self._origin_allowed(origin_text, host, scope.get("scheme", "http")):
                message = (
                    f"cross-origin request from {origin_text!r} refused: start the server with "
                    f"--cors-origin {origin_text} to allow that page"
                )
                return await _refuse(send, path, 403, message)
            if scope["method"] in _BODY_METHODS and not _is_json(headers.get(b"content-type", b"")):
                message = "a request from a web page must send its body as JSON (Content-Type: application/json)"
                return await _refuse(send, path, 415, message)
        return await self.app(scope, receive, send)

    def _host_allowed(self, host: str) -> bool:
        if "*" in self.allowed_hosts:
            return True
        name, _ = _split_host(host)
        if not name or name in self.allowed_hosts or name == self.machine:
            return True
        if any(name.endswith(allowed) for allowed in self.allowed_hosts if allowed.startswith(".")):
            return True
        try:
            address = ipaddress.ip_address(name)
        except ValueError:  # a name: only loopback names (a rebinding attack comes with its own domain)
            return name == "localhost" or name.endswith(".localhost")
        return address.is_loopback or name == self.bound or self.bound in ("0.0.0.0", "::", "")

    def _origin_allowed(self, origin: str, host: str, scheme: str) -> bool:
        if origin in self.cors_origins or "*" in self.cors_origins:
            return True
        parts = urlsplit(origin)
        if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
            return False  # "null" (sandboxed frames, files) and other schemes are never this page
        try:
            origin_port = parts.port or _DEFAULT_PORTS[parts.scheme]
        except ValueError:
            return False
        name, port = _split_host(host)
        return parts.hostname.lower() == name and origin_port == (port or _DEFAULT_PORTS.get(scheme, 80))


def _is_json(content_type: bytes) -> bool:
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or media.endswith(b"+json")


def _lone_surrogate(value: Any, path: str = "") -> tuple[str, int, str] | None:
    """(field path, character index, the character) of the first lone surrogate in a parsed JSON body."""
    if isinstance(value, str):
        found = _SURROGATE.search(value)
        return (path or "body", found.start(), found.group()) if found else None
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            found = _lone_surrogate(key, where) or _lone_surrogate(item, where)
            if found:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if found := _lone_surrogate(item, f"{path}[{index}]"):
                return found
    return None


class ReadBody:
    def __init__(self, app, limit: int, timeout: float) -> None:
        self.app, self.limit, self.timeout = app, limit, timeout

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] not in _BODY_METHODS:
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        too_large = f"request body exceeds {self.limit} bytes"
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await _refuse(send, path, 413, too_large, close=True)
        chunks: list[bytes] = []
        size = 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), self.timeout)
            except TimeoutError:
                message = f"the request body did not arrive within {self.timeout:g} s"
                return await _refuse(send, path, 408, message, close=True)
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                return await _refuse(send, path, 413, too_large, close=True)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as exc:
            message = f"request body is not valid UTF-8 (byte {exc.start} is {body[exc.start]:#04x}): send UTF-8 JSON"
            return await error_response(path, 400, message)(scope, receive, send)
        problem = _text_problem(body)
        if problem is not None:
            field, message = problem
            return await error_response(path, 400, message, field)(scope, receive, send)
        # ollama reads every body as JSON whatever its content type (curl -d sends a form type)
        headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
        scope = {**scope, "headers": [*headers, (b"content-type", b"application/json")]}
        delivered = False

        async def replay():
            nonlocal delivered
            if delivered:
                return await receive()  # after the body: the client's disconnect, when it comes
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)


def _text_problem(body: bytes) -> tuple[str, str] | None:
    """(field, message) when a JSON body holds text that is not valid Unicode; bodies that are not JSON are
    left to the route, which says so."""
    if not _SURROGATE_ESCAPE.search(body):
        return None
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    found = _lone_surrogate(parsed)
    if found is None:
        return None
    field, index, char = found
    return field, f"{field}: character {index} is a lone surrogate (U+{ord(char):04X}), which is not valid Unicode"


# a lone surrogate can only reach a JSON body as a \ud800-\udfff escape (raw UTF-8 cannot encode one)
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


class RequireKey:
    def __init__(self, app, api_key: str) -> None:
        self.app, self.expected = app, f"Bearer {api_key}".encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not scope.get("path", "").startswith(GUARDED_PREFIXES):
            return await self.app(scope, receive, send)
        given = dict(scope["headers"]).get(b"authorization", b"")
        if secrets.compare_digest(given, self.expected):
            return await self.app(scope, receive, send)
        message = "missing or wrong API key (send 'Authorization: Bearer KEY')"
        response = error_response(scope["path"], 401, message, kind="authentication_error")
        await response(scope, receive, send)


class SecurityHeaders:
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
