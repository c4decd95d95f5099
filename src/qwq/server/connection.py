"""One HTTP connection of `qwq serve`: uvicorn's h11 protocol with a deadline for a request's head.

uvicorn times out only idle keep-alive connections; a client that opens a connection and sends its headers
a byte at a time (or never) would hold it forever. Here the head of every request must be complete within
`HEADER_TIMEOUT_S` of its first byte (or of the connection's start): otherwise the server answers 408 in the
route dialect's JSON and closes the connection. The body's own deadline is `edge.ReadBody`'s.
"""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from qwq.server.error_shape import error_bytes

HEADER_TIMEOUT_S = 10.0
KEEP_ALIVE_S = 5  # an idle connection closes after this many seconds between requests


class TimedH11Protocol(H11Protocol):
    header_timeout = HEADER_TIMEOUT_S

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer: asyncio.TimerHandle | None = None
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE:  # still reading a request's head
            self._arm_head_timer()
        else:
            self._disarm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:  # the deadline runs from the head's first byte, not from each byte
            self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a response is still going out on this connection: its own request is not stalled
        body = error_bytes("", 408, f"the request's headers did not arrive within {self.header_timeout:g} s")
        head = (
            b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n\r\n"
        )
        self.transport.write(head + body)
        self.transport.close()
