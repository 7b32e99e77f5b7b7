"""Admission control at the HTTP edge: a bound on the completion requests in flight, and
cancellation of a request's work the moment its client disconnects.

The bound is TGI's ``max_concurrent_requests``: past it a request is answered 429 with
``Retry-After`` before its body is read, in microseconds, instead of queueing without limit.
A client that leaves is noticed by awaiting the ASGI ``http.disconnect`` message (no polling);
its work (media decoding, encoder calls, the wait for the first token, the decoder stream) is
cancelled at once, which cancels the gRPC calls it had open.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import map_exception
from services.common.errors import Overloaded

log = logging.getLogger(__name__)
T = TypeVar("T")
COMPLETION_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})


class InFlightLimit:
    """ASGI middleware: at most ``max_in_flight`` completion requests at once, a streamed one
    counted until its last byte is sent."""

    def __init__(self, app: ASGIApp, max_in_flight: int) -> None:
        self.app = app
        self.max_in_flight = max_in_flight
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in COMPLETION_PATHS:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.max_in_flight:
            refused = Overloaded(f"{self.in_flight} requests are in flight; retry later")
            await map_exception(refused).response()(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


async def cancel_on_disconnect(request: Request, work: Callable[[], Awaitable[T]]) -> T | None:
    """``work()``'s result, or None if the client disconnected first (its work then cancelled).
    Call it once the body has been read: the only message left to receive is the disconnect."""
    result: list[T] = []
    async with anyio.create_task_group() as group:

        async def watch() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass
            log.info("the client disconnected; its request is cancelled")
            group.cancel_scope.cancel()

        group.start_soon(watch)
        result.append(await work())
        group.cancel_scope.cancel()
    return result[0] if result else None
