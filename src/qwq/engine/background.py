"""The engine on a background thread, for the server: requests submitted from any thread, their outputs
handed over through per-request queues. Every accepted request gets a final output — its finish, an error,
or an abort when the thread stops — so no client ever waits on a request that will not end.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator, Sequence

from qwq.engine.engine import Engine, SequenceOutput
from qwq.engine.request import Request
from qwq.errors import ServerBusyError

logger = logging.getLogger(__name__)


class Handle:
    """One submitted request's outputs, read from the thread that serves it."""

    def __init__(self, engine_thread: EngineThread, request: Request) -> None:
        self.request = request
        self._engine_thread = engine_thread
        self._outputs: queue.Queue[SequenceOutput] = queue.Queue()
        self.done = False

    def put(self, output: SequenceOutput) -> None:
        self._outputs.put(output)

    def outputs(self) -> Iterator[SequenceOutput]:
        """The outputs as they come, up to and including the final one; closing early cancels the request."""
        try:
            while not self.done:
                output = self._outputs.get()
                self.done = output.finish_reason is not None
                yield output
        finally:
            self.cancel()

    def cancel(self) -> None:
        if not self.done:
            self._engine_thread.cancel(self)


class EngineThread:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._handles: dict[int, Handle] = {}
        self._wakeup = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="qwq-engine", daemon=True)
        self._thread.start()

    @property
    def load(self) -> tuple[int, int]:
        return self.engine.load

    def submit(self, requests: Sequence[Request]) -> list[Handle]:
        """Accept all of `requests` or none (the engine's checks and capacity error come from here)."""
        handles = [Handle(self, r) for r in requests]
        with self._wakeup:
            if self._stopped:
                raise ServerBusyError("the server is shutting down")
            self.engine.add(requests)
            self._handles.update({h.request.request_id: h for h in handles})
            self._wakeup.notify()
        return handles

    def cancel(self, handle: Handle) -> None:
        self.engine.abort(handle.request.request_id)
        with self._wakeup:
            self._wakeup.notify()

    def close(self, wait: bool = True, timeout: float = 10.0) -> None:
        """Stop taking requests and end every one still open with `abort` (the loop does it as it leaves,
        after the step in progress). wait=False returns at once: safe from a signal handler."""
        with self._wakeup:
            self._stopped = True
            self._wakeup.notify()
        if wait:
            self._thread.join(timeout=timeout)

    def _loop(self) -> None:
        while True:
            with self._wakeup:
                while not self._stopped and not self.engine.has_work:
                    self._wakeup.wait()
                if self._stopped:
                    break
            try:
                outputs = self.engine.step()
            except Exception as exc:  # an engine bug: fail what is in flight, keep serving
                logger.exception("engine step failed")
                outputs = self.engine.end_all("error", f"generation failed: {type(exc).__name__}: {exc}")
            self._dispatch(outputs)
        self._dispatch(self.engine.end_all("abort", "the server stopped"))

    def _dispatch(self, outputs: list[SequenceOutput]) -> None:
        with self._wakeup:
            for output in outputs:
                handle = self._handles.get(output.request_id)
                if handle is None:
                    continue
                if output.finish_reason is not None:
                    del self._handles[output.request_id]
                handle.put(output)
