"""The gateway's bound on a silent decoder stream (``--stream-idle-timeout-s``): the decoder
heartbeats a quiet request, so a stream that sends nothing at all for that long is a stalled
service."""

from __future__ import annotations

import asyncio

import grpc


class IdleWatch:
    """Cancels a call silent for ``idle_s``: a message only notes the time, and the one timer,
    when it fires early, waits again from there (``asyncio.timeout`` per read: ~12 us a token)."""

    def __init__(self, call: grpc.aio.UnaryStreamCall, idle_s: float) -> None:
        self._call = call
        self._idle_s = idle_s
        self._loop = asyncio.get_running_loop()
        self._last = self._loop.time()
        self._timer = self._loop.call_at(self._last + idle_s, self._check)
        self.expired = False

    def heard(self) -> None:
        self._last = self._loop.time()

    def stop(self) -> None:
        self._timer.cancel()

    def _check(self) -> None:
        due = self._last + self._idle_s
        if self._loop.time() < due:
            self._timer = self._loop.call_at(due, self._check)
            return
        self.expired = True
        self._call.cancel()
