"""uvicorn's HTTP/1.1 protocol (h11) with a deadline on receiving each request.

uvicorn closes an idle keep-alive connection, but nothing bounds how long a client may take
to *send* a request: every byte received cancels the keep-alive timer and h11 waits for the
rest of the headers as long as it takes, so a client sending one byte a second holds its
connection for ever (and enough such clients hold them all). An ASGI middleware cannot help:
the app is called only once the headers are complete.

Here a request's headers must arrive within ``header_timeout_s`` (counted from the
connection's start, or on a reused connection from the request's first byte) and its body
within ``body_timeout_s`` of the headers. Past either the client gets a 408 (when nothing
was answered yet) and the connection is closed. Once a request is received no deadline runs:
the answer may take as long as the engine needs. The same pattern as hyper's
``header_read_timeout`` or nginx's ``client_header_timeout`` / ``client_body_timeout``.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

Phase = Literal["headers", "body"]

_TIMED_OUT = (b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\n"
              b"connection: close\r\n\r\n")


class DeadlineProtocol(H11Protocol):
    """Pass :meth:`configured` (a subclass with the two timeouts) as uvicorn's ``http``."""

    header_timeout_s: float = 30.0
    body_timeout_s: float = 30.0

    @classmethod
    def configured(cls, header_timeout_s: float, body_timeout_s: float
                   ) -> type[DeadlineProtocol]:
        return type(cls.__name__, (cls,), {"header_timeout_s": header_timeout_s,
                                           "body_timeout_s": body_timeout_s})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._phase: Phase | None = None
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._watch(started=True)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch(started=True)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # a pipelined request may already be (partly) buffered
        self._watch(started=bool(self.conn.trailing_data[0]))

    def connection_lost(self, exc: Exception | None) -> None:
        self._arm(None)
        super().connection_lost(exc)

    def _watch(self, started: bool) -> None:
        """Which part of a request is awaited now, and its deadline. An idle connection
        between requests has none (uvicorn's keep-alive timer closes it)."""
        if self.transport.is_closing():
            phase: Phase | None = None
        elif self.conn.their_state is h11.SEND_BODY:
            phase = "body"
        elif self.conn.their_state is h11.IDLE and (started or self._phase == "headers"):
            phase = "headers"
        else:  # received whole, or the connection is done
            phase = None
        if phase != self._phase:
            self._arm(phase)

    def _arm(self, phase: Phase | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._phase = phase
        if phase is not None:
            timeout = self.header_timeout_s if phase == "headers" else self.body_timeout_s
            self._deadline = self.loop.call_later(timeout, self._expired)

    def _expired(self) -> None:
        self._deadline = None
        phase, self._phase = self._phase, None
        if self.transport.is_closing():
            return
        cycle = self.cycle if phase == "body" else None
        if cycle is None or not cycle.response_started:
            self.transport.write(_TIMED_OUT)
        if cycle is not None:  # the app reading the body sees the client gone
            cycle.disconnected = True
            cycle.message_event.set()
        self.logger.info("%s:%d - request %s not received in time, connection closed",
                         *(self.client or ("-", 0)), phase)
        self.transport.close()
