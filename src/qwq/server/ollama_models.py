"""The Ollama API's model management: /api/tags (what is served), /api/show, /api/ps (what is resident, until
when), /api/pull (progress streamed as NDJSON, as ollama does) and /api/delete."""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from qwq.api import Model, load
from qwq.errors import InvalidRequestError, ModelLoadError, ModelNotFoundError, QwqError
from qwq.pull_progress import PullProgress
from qwq.server.protocol import RequestBody
from qwq.server.registry import ModelRegistry, served_by
from qwq.server.served_models import ServedModel
from qwq.server.service import stream_until_closed
from qwq.store import lookup, pull, remove

router = APIRouter(prefix="/api")

FOREVER_STAMP = "9999-12-31T23:59:59Z"
_LAST_STAMPABLE = 253402300799  # FOREVER_STAMP in seconds since the epoch
PROGRESS_EVERY_S = 0.1  # byte counts of one file streamed at most this often (its last always)


class ModelName(RequestBody):
    model: str | None = None
    name: str | None = None  # older clients

    def required(self, what: str) -> str:
        name = self.model or self.name
        if not name:
            raise InvalidRequestError(f"model: required (the name of the model to {what})", field="model")
        return name


class PullRequest(ModelName):
    stream: bool = True
    insecure: bool = False  # ollama's field; every pull here is verified against its published checksums


def stamp(seconds: float) -> str:
    """RFC 3339 in UTC, as ollama writes times; a keep-alive past the year 9999 is forever."""
    if seconds >= _LAST_STAMPABLE:
        return FOREVER_STAMP
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@lru_cache(maxsize=64)
def _description(path: str, modified: float) -> Model:
    """A model's architecture and tokenizer without its weights, read once per version of its files."""
    return load(path, device="meta")


def described(served: ServedModel, models: ModelRegistry) -> Model:
    """The loaded model, or its description when it is not resident (no weights read)."""
    service = models.loaded(served.name)
    if service is not None:
        return service.model
    path = served.path
    try:
        return _description(str(path), path.stat().st_mtime)
    except OSError:
        raise ModelNotFoundError(f"model {served.name!r}: its files are gone ({path})", field="model") from None


def _details(model: Model) -> dict[str, Any]:
    return {
        "format": "gguf" if Path(model.source).is_file() else "safetensors",
        "family": "qwen2",
        "families": ["qwen2"],
        "parameter_size": f"{model.num_parameters() / 1e9:.1f}B",
        "quantization_level": model.quantization or str(model.dtype).removeprefix("torch."),
    }


def _file_size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _entry(served: ServedModel, models: ModelRegistry) -> dict[str, Any]:
    path = served.path
    entry = lookup(served.source) if served.pulled else None
    digest = entry.split.sha256 if entry is not None and entry.split is not None else ""
    return {
        "name": served.name,
        "model": served.name,
        "modified_at": stamp(path.stat().st_mtime),
        "size": _file_size(path),
        "digest": digest,
        "details": _details(described(served, models)),
    }


@router.get("/tags")
def tags(request: Request) -> dict[str, Any]:
    models = served_by(request)
    listed = []
    for served in models.catalog.served():
        try:
            listed.append(_entry(served, models))
        except (OSError, QwqError):  # deleted or broken since it was listed: not servable now
            continue
    return {"models": listed}


@router.get("/ps")
def running(request: Request) -> dict[str, Any]:
    models = served_by(request)
    listed = []
    for resident in models.resident():
        service = resident.service
        size = service.resident_bytes
        entry = {**_entry(resident.served, models), "size": size}
        expires = FOREVER_STAMP if resident.expires_at is None else stamp(resident.expires_at)
        on_gpu = service.model.device.type != "cpu"
        context = service.model.context_length
        listed.append({**entry, "expires_at": expires, "size_vram": size if on_gpu else 0, "context_length": context})
    return {"models": listed}


@router.post("/show")
def show(body: ModelName, request: Request) -> dict[str, Any]:
    models = served_by(request)
    served = models.catalog.find(body.required("show; GET /api/tags lists them"))
    model = described(served, models)
    config = model.config
    defaults = model.generation_defaults
    parameters = "\n".join(
        [
            f"temperature {defaults.temperature:g}",
            f"top_p {defaults.top_p:g}",
            f"top_k {defaults.top_k}",
            f"repeat_penalty {defaults.repetition_penalty:g}",
            *(f'stop "{model.tokenizer.decode([i])}"' for i in defaults.eos_token_ids),
        ]
    )
    info = {
        "general.architecture": "qwen2",
        "general.parameter_count": model.num_parameters(),
        "qwen2.context_length": config.max_position_embeddings,
        "qwen2.embedding_length": config.hidden_size,
        "qwen2.block_count": config.num_hidden_layers,
        "qwen2.attention.head_count": config.num_attention_heads,
        "qwen2.attention.head_count_kv": config.num_key_value_heads,
        "qwen2.feed_forward_length": config.intermediate_size,
        "qwen2.rope.freq_base": config.rope_theta,
        "qwq.storage": model.storage_description(),
    }
    capabilities = ["completion"] + (["thinking"] if model.reasoning.reasons else [])
    return {
        "modelfile": f"FROM {served.name}",  # the store's name: the file's path is the server's business
        "parameters": parameters,
        "template": model.tokenizer.chat_template or "",
        "details": _details(model),
        "model_info": info,
        "capabilities": capabilities,
        "modified_at": stamp(served.path.stat().st_mtime),
    }


def _known(name: str) -> str:
    """The store's name for `name`, or a 404 (400 for a malformed Hub name) before any pulling starts."""
    try:
        entry = lookup(name)
    except ModelLoadError as exc:
        raise InvalidRequestError(f"model: {exc}", field="model") from None
    if entry is None:
        raise ModelNotFoundError(f"model {name!r} is not a name qwq can pull (qwq, qwen2.5-coder:0.5b, ...)", "model")
    return entry.name


def _pull_events(name: str) -> Iterator[dict[str, Any]]:
    """The pull's progress as ollama streams it, from a worker thread (a client that leaves does not stop it:
    the files land, verified, for the next request); a failure is the last line, as `{"error": ...}`."""
    events: queue.Queue[PullProgress | QwqError | None] = queue.Queue()

    def work() -> None:
        try:
            pull(name, events.put)
        except QwqError as exc:
            events.put(exc)
        except Exception as exc:  # a bug: still an error line, never a cut stream
            events.put(QwqError(f"pull failed ({type(exc).__name__}: {exc})"))
        finally:
            events.put(None)

    threading.Thread(target=work, name=f"qwq-pull-{name}", daemon=True).start()
    last: dict[str | None, float] = {}
    while (event := events.get()) is not None:
        if isinstance(event, QwqError):
            yield {"error": str(event)}
            continue
        now = time.monotonic()
        partial = event.completed is not None and event.completed < (event.total or 0)
        if partial and now - last.get(event.digest, 0.0) < PROGRESS_EVERY_S:
            continue
        last[event.digest] = now
        yield event.as_json()


@router.post("/pull")
async def pull_model(body: PullRequest, request: Request):
    name = _known(body.required("pull"))
    if body.stream:
        lines = (json.dumps(event) + "\n" for event in _pull_events(name))
        return StreamingResponse(stream_until_closed(lines, [], request), media_type="application/x-ndjson")
    outcome = await anyio.to_thread.run_sync(lambda: list(_pull_events(name))[-1])
    if "error" in outcome:
        return JSONResponse(outcome, status_code=502)
    return outcome


@router.delete("/delete")
async def delete_model(body: ModelName, request: Request):
    models = served_by(request)
    served = models.catalog.find(body.required("delete"))
    if not served.pulled:
        raise InvalidRequestError(f"model {served.name!r} was given to `qwq serve` as a file: delete it there", "model")
    await anyio.to_thread.run_sync(models.unload, served.name)
    remove(served.name)
    return Response(status_code=200)
