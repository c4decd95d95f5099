"""Starting the server: the model registry (each model's engine on its background thread, built here), the app,
uvicorn; stopping it within seconds."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from types import FrameType

import uvicorn

from qwq.api import Model
from qwq.engine.background import EngineThread
from qwq.engine.engine import Engine
from qwq.engine.request import GenerationParams
from qwq.errors import InvalidRequestError
from qwq.reasoning.guard_protocol import Guard
from qwq.server.app import create_app
from qwq.server.connection import HEADER_TIMEOUT_S, KEEP_ALIVE_S, TimedH11Protocol
from qwq.server.registry import ModelRegistry
from qwq.server.served_models import ServedModel
from qwq.server.service import Service

logger = logging.getLogger(__name__)

SHUTDOWN_GRACE_S = 2
MAX_CONNECTIONS = 512  # beyond this many open connections uvicorn answers 503 at once


def check_port_free(host: str, port: int) -> None:
    """Refuse a busy or impossible address before the model loads (not after a minute of loading)."""
    if not 0 < port < 65536:
        raise InvalidRequestError(f"--port must be in 1..65535, got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise InvalidRequestError(f"--host {host}: not an address of this machine ({exc.strerror})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError as exc:
            raise InvalidRequestError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


class _Server(uvicorn.Server):
    """uvicorn's server, which on SIGTERM or Ctrl+C first ends every generation in flight (finish reason
    `abort`), so open streams close properly within the grace period instead of being cut."""

    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None]) -> None:
        super().__init__(config)
        self.on_exit = on_exit

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.on_exit()
        super().handle_exit(sig, frame)


def service_opener(
    load_model: Callable[[ServedModel], Model],
    *,
    guard: Guard | None,
    defaults: GenerationParams | None = None,
    max_batch: int,
    max_queue: int,
) -> Callable[[ServedModel], Service]:
    """How the registry opens a model: loaded with the serve command's load flags, its engine started; the
    sampling flags' `defaults` go to requests that leave those fields unset."""

    def open_service(served: ServedModel) -> Service:
        started = time.perf_counter()
        model = load_model(served)
        engine = Engine(
            model.network,
            model.tokenizer,
            model.context_length,
            max_batch=max_batch,
            max_waiting=max_queue,
            prefix_cache=model.prefix_cache,
        )
        load_seconds = time.perf_counter() - started
        thread = EngineThread(engine)
        return Service(model, thread, served.name, guard=guard, defaults=defaults, load_seconds=load_seconds)

    return open_service


def serve(
    models: ModelRegistry,
    *,
    host: str,
    port: int,
    api_key: str | None,
    cors_origins: list[str],
    allowed_hosts: list[str],
    read_timeout: float,
) -> int:
    app = create_app(
        models,
        api_key=api_key,
        cors_origins=cors_origins,
        bound_host=host,
        allowed_hosts=allowed_hosts,
        body_timeout=read_timeout,
    )
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        logger.warning("serving on %s without an API key: anyone who can reach this address can use it", host)
    names = ", ".join(served.name for served in models.catalog.served()) or "no models yet (POST /api/pull)"
    logger.info("serving %s on http://%s:%d (OpenAI API at /v1, Ollama API at /api, chat page at /)", names, host, port)
    protocol = type("Protocol", (TimedH11Protocol,), {"header_timeout": min(read_timeout, HEADER_TIMEOUT_S)})
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http=protocol,
        log_level="warning",
        timeout_keep_alive=KEEP_ALIVE_S,
        limit_concurrency=MAX_CONNECTIONS,
        timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
    )
    try:
        _Server(config, on_exit=lambda: models.close(wait=False)).run()
    finally:
        models.close()
    return 0
