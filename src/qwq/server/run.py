"""Starting the server: the batching engine on the loaded model, the app, uvicorn."""

from __future__ import annotations

import logging
from pathlib import Path

from qwq.api import Model
from qwq.engine.batching import BatchEngine
from qwq.server.app import create_app
from qwq.server.service import Service

logger = logging.getLogger(__name__)


def serve(
    model: Model,
    name: str,
    reasoning_style: tuple[str, bool],
    load_seconds: float,
    *,
    host: str,
    port: int,
    api_key: str | None,
    cors_origins: list[str],
    max_batch: int,
    max_queue: int,
) -> int:
    import uvicorn

    engine = BatchEngine(model.network, model.context_length, max_batch=max_batch, max_waiting=max_queue)
    served = Path(name).stem if Path(name).suffix == ".gguf" else name
    aliases = tuple({name, served, f"{served}:latest"} - {served})
    service = Service(model, engine, served, reasoning_style, aliases=aliases, load_seconds=load_seconds)
    app = create_app(service, api_key=api_key, cors_origins=cors_origins)
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        logger.warning("serving on %s without an API key: anyone who can reach this address can use it", host)
    logger.info(
        "serving %s on http://%s:%d (OpenAI API at /v1, Ollama API at /api, chat page at /)", served, host, port
    )
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        engine.close()
    return 0
