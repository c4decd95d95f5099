"""The models `qwq serve` holds in memory: loaded on first use (a request waits for the load; a request for
the same model while it loads waits for that load), at most `max_loaded` resident, and each unloaded once it
has been idle for its keep-alive (ollama's `keep_alive`: the last request's, else the server's default).

When a load needs room, the least recently used resident model is chosen: it takes no new requests, and is
unloaded as soon as its running requests finish (they are never cut); requests for it wait and load it
again once there is room. Before a model is given room, its header is read (`preflight`: config and
tokenizer, no weights), so a broken file unloads nothing. A load that fails fails the requests waiting for
it, with the load's error named (503), and leaves the other resident models serving.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
from starlette.requests import Request

from qwq.errors import ModelUnavailableError, QwqError
from qwq.heap import return_freed_memory
from qwq.server.keep_alive import FOREVER
from qwq.server.metrics import ServerMetrics
from qwq.server.served_models import ModelCatalog, ServedModel
from qwq.server.service import Service

logger = logging.getLogger(__name__)

POLL_S = 0.1  # how often idle models are checked against their keep-alive
UNLOAD_WAIT_S = 10.0  # an explicit unload (keep_alive 0, `qwq stop`) answers once done, or after this long


def served_by(request: Request) -> ModelRegistry:
    """The registry of the app serving `request` (create_app keeps it)."""
    return request.app.state.models


@dataclass
class _Slot:
    """A resident model, or one being loaded (no service yet)."""

    served: ServedModel
    keep_alive: float
    service: Service | None = None
    leases: int = 0  # requests between acquire and submit (the engine counts them from then on)
    idle_since: float | None = None  # time.monotonic()
    draining: bool = False  # to be unloaded once idle; takes no new requests
    failure: QwqError | None = None  # the load failed: told to the requests that waited for it

    @property
    def busy(self) -> bool:
        return self.leases > 0 or self.service is None or self.service.busy


@dataclass(frozen=True)
class Resident:
    """A loaded model as /api/ps shows it."""

    served: ServedModel
    service: Service
    expires_at: float | None  # seconds since the epoch; None: kept loaded for good


class ModelRegistry:
    def __init__(
        self,
        catalog: ModelCatalog,
        open_service: Callable[[ServedModel], Service],
        *,
        preflight: Callable[[ServedModel], object] | None = None,
        max_loaded: int = 1,
        keep_alive: float = 300.0,
        metrics: ServerMetrics | None = None,
    ) -> None:
        self.catalog = catalog
        self.max_loaded = max_loaded
        self.keep_alive = keep_alive
        self.metrics = metrics or ServerMetrics()
        self._open_service = open_service
        self._preflight = preflight
        self._slots: OrderedDict[str, _Slot] = OrderedDict()  # least recently used first
        self._changed = threading.Condition()
        self._closed = False
        self._reaper = threading.Thread(target=self._reap, name="qwq-models", daemon=True)
        self._reaper.start()

    @classmethod
    def holding(cls, service: Service) -> ModelRegistry:
        """A registry of one model loaded already (the Python API's way to serve a Model): kept for good."""

        def cannot_reload(served: ServedModel) -> Service:
            raise ModelUnavailableError(f"model {served.name!r} was unloaded and was handed over loaded: restart")

        catalog = ModelCatalog([ServedModel(service.name, service.model.source)], include_store=False)
        registry = cls(catalog, cannot_reload, keep_alive=FOREVER, metrics=service.metrics)
        service.metrics = registry.metrics
        registry._slots[service.name] = _Slot(catalog.given[0], FOREVER, service)
        return registry

    # -- requests

    def acquire(self, name: str, keep_alive: float | None = None) -> Service:
        """The loaded model `name` reaches, loading it first if need be (blocking: call from a worker thread);
        `keep_alive` (seconds) becomes the model's. Hand it back with `release` once the request is submitted."""
        served = self.catalog.find(name)
        key = served.name
        with self._changed:
            resident = key in self._slots
        if not resident and self._preflight is not None:
            try:
                self._preflight(served)
            except Exception as exc:
                raise self._failed(key, exc) from None
        with self._changed:
            while True:
                if self._closed:
                    raise ModelUnavailableError("the server is shutting down")
                slot = self._slots.get(key)
                if slot is not None and slot.service is not None and not slot.draining:
                    slot.leases += 1
                    slot.idle_since = None
                    slot.keep_alive = self.keep_alive if keep_alive is None else keep_alive
                    self._slots.move_to_end(key)
                    return slot.service
                if slot is None and self._make_room():
                    slot = _Slot(served, self.keep_alive if keep_alive is None else keep_alive, leases=1)
                    self._slots[key] = slot
                    break
                waited_on = slot
                self._changed.wait()
                if waited_on is not None and waited_on.failure is not None:
                    raise waited_on.failure
        return self._load(slot)

    def release(self, service: Service) -> None:
        with self._changed:
            slot = self._slots.get(service.name)
            if slot is not None and slot.service is service:
                slot.leases -= 1
            self._changed.notify_all()

    @asynccontextmanager
    async def using(self, name: str, keep_alive: float | None = None) -> AsyncIterator[Service]:
        """`acquire` from a worker thread, `release` at the end of the block."""
        service = await anyio.to_thread.run_sync(self.acquire, name, keep_alive)
        try:
            yield service
        finally:
            self.release(service)

    def unload(self, name: str) -> bool:
        """Unload `name` once its running requests finish (at once if it has none; waits for that, at most
        UNLOAD_WAIT_S). False if it was not loaded."""
        key = self.catalog.find(name).name
        deadline = time.monotonic() + UNLOAD_WAIT_S
        with self._changed:
            slot = self._slots.get(key)
            if slot is None:
                return False
            slot.draining = True
            self._changed.notify_all()
            while self._slots.get(key) is slot and time.monotonic() < deadline:
                self._changed.wait(timeout=POLL_S)
        return True

    # -- what is resident

    def resident(self) -> list[Resident]:
        now_wall, now = time.time(), time.monotonic()
        with self._changed:
            slots = [slot for slot in self._slots.values() if slot.service is not None]
        listed = []
        for slot in reversed(slots):  # most recently used first, as ollama lists them
            idle = 0.0 if slot.busy or slot.idle_since is None else now - slot.idle_since
            expires = None if slot.keep_alive == FOREVER else now_wall - idle + slot.keep_alive
            listed.append(Resident(slot.served, slot.service, expires))
        return listed

    def loaded(self, name: str) -> Service | None:
        """The model `name` reaches if it is resident (not being unloaded), without touching its use."""
        with self._changed:
            slot = self._slots.get(self.catalog.find(name).name)
            return slot.service if slot is not None and not slot.draining else None

    def queues(self) -> list[tuple[str, int, int]]:
        """(model, running, waiting) for each resident model, for /health and /metrics."""
        return [(r.served.name, *r.service.engine.load) for r in self.resident()]

    def close(self, wait: bool = True) -> None:
        """Stop serving: every resident model ends what it runs (`abort`); safe from a signal handler with
        wait=False."""
        with self._changed:
            self._closed = True
            services = [slot.service for slot in self._slots.values() if slot.service is not None]
            self._changed.notify_all()
        for service in services:
            service.close(wait=wait)

    # -- loading and unloading

    def _make_room(self) -> bool:
        """True when one more model fits; else the least recently used resident model is set to unload once
        idle (unless one is on its way out already), and False: the caller waits."""
        if len(self._slots) < self.max_loaded:
            return True
        if not any(slot.draining for slot in self._slots.values()):
            victim = next((s for s in self._slots.values() if s.service is not None), None)
            if victim is not None:
                logger.info("unloading %s to make room (--max-loaded %d)", victim.served.name, self.max_loaded)
                victim.draining = True
                self._changed.notify_all()
        return False

    def _load(self, slot: _Slot) -> Service:
        name = slot.served.name
        logger.info("loading %s", name)
        try:
            service = self._open_service(slot.served)
        except Exception as exc:
            failure = self._failed(name, exc)
            with self._changed:
                slot.failure = failure
                del self._slots[name]
                self._changed.notify_all()
            raise failure from None
        service.metrics = self.metrics
        logger.info("loaded %s in %.1f s", name, service.load_seconds)
        self._count_load(name, "loaded")
        with self._changed:
            slot.service = service
            self._changed.notify_all()
        return service

    def _failed(self, name: str, exc: Exception) -> ModelUnavailableError:
        reason = str(exc) if isinstance(exc, QwqError) else f"{type(exc).__name__}: {exc}"
        logger.error("loading %s failed: %s", name, reason)
        self._count_load(name, "failed")
        return ModelUnavailableError(f"model {name!r} could not be loaded: {reason}", field="model")

    def _count_load(self, name: str, outcome: str) -> None:
        self.metrics.loads.labels(name, outcome).inc()

    def _reap(self) -> None:
        """The one place models are unloaded: those draining or past their keep-alive, once idle."""
        while True:
            with self._changed:
                if self._closed:
                    return
                now, leaving = time.monotonic(), []
                for slot in self._slots.values():
                    if slot.busy:
                        slot.idle_since = None
                        continue
                    slot.idle_since = now if slot.idle_since is None else slot.idle_since
                    if slot.draining or now - slot.idle_since >= slot.keep_alive:
                        slot.draining = True
                        leaving.append(slot)
                if not leaving:
                    self._changed.wait(timeout=POLL_S)
                    continue
            for slot in leaving:
                self._unload(slot)

    def _unload(self, slot: _Slot) -> None:
        """Stop its engine, hand its memory back, then forget it: an explicit unload returns once the memory
        is free (/api/ps stops listing the model as this begins)."""
        service = slot.service
        service.close()  # idle: nothing to abort, the thread just ends
        with self._changed:
            slot.service = None  # requests for it wait (it is draining) until it is gone, then load it anew
        del service
        gc.collect()  # the weights' tensors go now, not at some later collection
        return_freed_memory()
        with self._changed:
            del self._slots[slot.served.name]
            self._changed.notify_all()
        logger.info("unloaded %s", slot.served.name)
