"""The HTTP protocol ``llmi serve`` runs uvicorn with: uvicorn's h11 protocol plus a read deadline.

uvicorn closes a kept-alive connection that stays idle after a response, but a connection that never
sends a request — or sends its headers or body a byte at a time — is kept open forever, so a few hundred
of them (slowloris) take every connection the server allows. Here each request must arrive in full —
request line, headers and body — within ``[server] request_timeout_s`` of the connection opening or of
the previous response; otherwise the connection is closed. Streaming *responses* (events, chat streams)
are not limited: the deadline ends once the request is in.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.h11_impl import H11Protocol


class DeadlineH11Protocol(H11Protocol):
    """:class:`H11Protocol` whose requests must be read within ``request_timeout_s``."""

    request_timeout_s: float = 60.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline: asyncio.TimerHandle | None = None
        self._awaited = None
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._check()

    def on_response_complete(self) -> None:
        self._arm()  # the next request on this connection gets its own deadline
        super().on_response_complete()
        self._check()  # a pipelined request may already be in

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    # -- the deadline --------------------------------------------------------------------------------
    def _arm(self) -> None:
        self._disarm()
        self._awaited = self.cycle  # the request being waited for is the one after this cycle
        self._deadline = self.loop.call_later(self.request_timeout_s, self._expired)

    def _disarm(self) -> None:
        handle = getattr(self, "_deadline", None)
        if handle is not None:
            handle.cancel()
            self._deadline = None

    def _received(self) -> bool:
        """Whether the awaited request has arrived in full (its headers and its whole body)."""
        cycle = self.cycle
        return cycle is not None and cycle is not self._awaited and not cycle.more_body

    def _check(self) -> None:
        if getattr(self, "_deadline", None) is not None and self._received():
            self._disarm()

    def _expired(self) -> None:
        self._deadline = None
        if self._received() or self.transport is None or self.transport.is_closing():
            return
        self.logger.info("closing a connection whose request did not arrive within %g s", self.request_timeout_s)
        self.transport.close()


def protocol_class(request_timeout_s: float) -> type[DeadlineH11Protocol]:
    """The protocol class for uvicorn's ``http=`` setting, with this deadline."""
    return type("LlmiH11Protocol", (DeadlineH11Protocol,), {"request_timeout_s": float(request_timeout_s)})
