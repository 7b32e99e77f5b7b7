"""The engine's own thread, and the bridge between it and the asyncio servicer.

The engine (and the model) are touched by one thread only. Callers on the event loop put
"add" and "abort" messages in a thread-safe inbox; the engine thread drains it before every
step and hands each step's outputs back to the loop with ``call_soon_threadsafe``, where they
are routed to one asyncio queue per request. A caller that stops listening (a cancelled gRPC
call) aborts its request, which frees its cache in the engine's next step.

A step that raises leaves the engine in an unknown state (vLLM's ``EngineDeadError``): the thread
ends, every open stream gets ``NotReady`` at once, later calls are refused, and ``on_failure``
runs on the loop (the server turns its health NOT_SERVING, so an orchestrator restarts it).
A step that never returns is treated the same once it has run for ``step_timeout_s``
(watchdog.py); the stuck thread is then left behind.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncGenerator, Callable

from services.common.errors import InvalidInput, NotReady, ServiceError
from services.decoder.engine import Engine
from services.decoder.sequence import Pending
from services.decoder.types import GenerateOutput, GenerateRequest
from services.decoder.watchdog import StepWatchdog

log = logging.getLogger(__name__)

_Message = tuple[str, Pending | str | None]


ENGINE_FAILED = "the decoder's engine failed; the service must be restarted"


class EngineThread:
    def __init__(
        self,
        engine: Engine,
        loop: asyncio.AbstractEventLoop,
        on_failure: Callable[[], None] = lambda: None,
        step_timeout_s: float = 120.0,
    ) -> None:
        self.engine = engine
        self._loop = loop
        self._on_failure = on_failure
        self.failed = False  # set by the engine thread, read on the loop
        self._inbox: queue.SimpleQueue[_Message] = queue.SimpleQueue()
        self._streams: dict[str, asyncio.Queue[GenerateOutput | Exception]] = {}
        self._thread = threading.Thread(target=self._run, name="decoder-engine", daemon=True)
        self._failing = threading.Lock()  # the engine thread and the watchdog may both fail it
        self._watchdog = StepWatchdog(step_timeout_s, self._hung)

    def start(self) -> None:
        self._thread.start()
        self._watchdog.start()

    def stop(self) -> None:
        """Ask the engine thread to finish and wait for it (blocking: run it in a thread); a
        thread stuck in a step is waited for no longer than the watchdog would."""
        self._watchdog.stop()
        self._inbox.put(("stop", None))
        self._thread.join(0 if self.failed else self._watchdog.timeout_s)

    async def generate(self, request: GenerateRequest) -> AsyncGenerator[GenerateOutput]:
        """Stream a request's outputs; leaving early (cancellation, error) aborts it."""
        if self.failed:
            raise NotReady(ENGINE_FAILED)
        # reject what can never run before it queues; hash it here, not on the engine thread
        pending = await asyncio.to_thread(self.engine.prepare, request)
        if request.request_id in self._streams:
            raise InvalidInput(f"request id {request.request_id!r} is already running")
        stream: asyncio.Queue[GenerateOutput | Exception] = asyncio.Queue()
        self._streams[request.request_id] = stream
        self._inbox.put(("add", pending))
        finished = False
        try:
            while not finished:
                item = await stream.get()
                if isinstance(item, Exception):
                    finished = True  # the engine already dropped it
                    raise item
                finished = item.finished
                yield item
        finally:
            del self._streams[request.request_id]
            if not finished:
                self._inbox.put(("abort", request.request_id))

    # -- the engine thread ------------------------------------------------------------------

    def _run(self) -> None:
        while self._drain(block=not self.engine.has_work()):
            try:
                with self._watchdog.step():
                    outputs = self.engine.step()
            except Exception:
                log.exception("engine step failed; failing every open stream, serving no more")
                self._fail()
                return
            if self.failed:  # the watchdog gave up on this step while it ran
                return
            if outputs:
                self._loop.call_soon_threadsafe(self._deliver, outputs)

    def _hung(self, seconds: float) -> None:
        """On the watchdog's thread: one step has run past the step timeout."""
        log.error(
            "an engine step has run for %.0f s (--step-timeout-s %g); failing every open "
            "stream, serving no more", seconds, self._watchdog.timeout_s,
        )  # fmt: skip
        self._fail()

    def _fail(self) -> None:
        with self._failing:
            if self.failed:
                return
            self.failed = True
        self._loop.call_soon_threadsafe(self._fail_streams)

    def _drain(self, block: bool) -> bool:
        """Apply queued adds and aborts; False once asked to stop."""
        while True:
            try:
                kind, payload = self._inbox.get(block=block)
            except queue.Empty:
                return True
            block = False
            if kind == "stop":
                return False
            if kind == "abort":
                assert isinstance(payload, str)
                self.engine.abort(payload)
            elif kind == "add":
                assert isinstance(payload, Pending)
                try:
                    self.engine.add(payload)
                except ServiceError as exc:
                    self._loop.call_soon_threadsafe(self._deliver_error, payload.request_id, exc)

    # -- on the event loop ------------------------------------------------------------------

    def _deliver(self, outputs: list[GenerateOutput]) -> None:
        for output in outputs:
            stream = self._streams.get(output.request_id)
            if stream is not None:  # None: the caller left, its abort is on the way
                stream.put_nowait(output)

    def _fail_streams(self) -> None:
        for stream in self._streams.values():
            stream.put_nowait(NotReady(ENGINE_FAILED))
        self._on_failure()

    def _deliver_error(self, request_id: str, exc: Exception) -> None:
        stream = self._streams.get(request_id)
        if stream is not None:
            stream.put_nowait(exc)
