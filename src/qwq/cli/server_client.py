"""`qwq ps` and `qwq stop MODEL`: clients of a running `qwq serve` (as ollama's are of its server), over its
Ollama API. The server is `--host`, else $QWQ_HOST, else http://127.0.0.1:11435; its key $QWQ_API_KEY."""

from __future__ import annotations

import argparse
import json
import os
import urllib.error
import urllib.request
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from qwq.errors import ModelNotFoundError, QwqError

DEFAULT_PORT = 11435
_TIMEOUT_S = 30.0


def add_host_option(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--host", help=f"the server: URL or HOST[:PORT] (default: $QWQ_HOST, else 127.0.0.1:{DEFAULT_PORT})"
    )


def server_url(host: str | None) -> str:
    """The server's base URL from `--host` / $QWQ_HOST, written as ollama's OLLAMA_HOST is ("0.0.0.0",
    "example:8080", "https://example")."""
    value = (host or os.environ.get("QWQ_HOST") or "").strip() or f"127.0.0.1:{DEFAULT_PORT}"
    schemeless = "://" not in value
    parts = urlsplit(f"http://{value}" if schemeless else value)
    try:
        port = parts.port
    except ValueError:
        port = None
        parts = parts._replace(netloc="")
    if not parts.hostname:
        raise QwqError(f"--host {value!r}: not a server address (write HOST[:PORT] or a URL)")
    netloc = f"{parts.netloc}:{DEFAULT_PORT}" if schemeless and port is None else parts.netloc
    return f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}"


def _call(url: str, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    headers = {"Content-Type": "application/json"}
    if key := os.environ.get("QWQ_API_KEY"):
        headers["Authorization"] = f"Bearer {key}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{url}{path}", data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response:
            return json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("error", exc.reason)
        except ValueError:
            message = exc.reason
        error = ModelNotFoundError if exc.code == 404 else QwqError
        raise error(f"{url}: {message}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise QwqError(f"no qwq server answers at {url} ({reason}); start one with `qwq serve`") from None


def _until(expires_at: str, now: datetime) -> str:
    expires = datetime.fromisoformat(expires_at.replace("Z", "+00:00"))
    if expires.year >= 9999:
        return "Forever"
    seconds = max(0, int((expires - now).total_seconds()))
    if seconds < 60:
        return f"{seconds} seconds from now"
    minutes = seconds // 60
    return f"{minutes} minute{'s' if minutes > 1 else ''} from now"


def ps_command(args: argparse.Namespace) -> int:
    """The models the server holds in memory, most recently used first, as `ollama ps` lists them."""
    url = server_url(args.host)
    models = _call(url, "GET", "/api/ps")["models"]
    rows = [("NAME", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL")]
    now = datetime.now(UTC)
    for model in models:
        processor = "100% GPU" if model.get("size_vram") else "100% CPU"
        size = f"{model['size'] / 1e9:.2f} GB"
        rows.append((model["name"], size, processor, str(model["context_length"]), _until(model["expires_at"], now)))
    widths = [max(len(row[i]) for row in rows) + 3 for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + row[-1])
    return 0


def stop_command(args: argparse.Namespace) -> int:
    """Unload a model now (after its running requests), as `ollama stop` does: keep_alive 0, no prompt."""
    url = server_url(args.host)
    for name in args.models:
        _call(url, "POST", "/api/generate", {"model": name, "keep_alive": 0})
    return 0
