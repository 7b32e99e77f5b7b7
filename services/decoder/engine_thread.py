"""The engine's own thread, and the bridge between it and the asyncio servicer.

The engine (and the model) are touched by one thread only. Callers on the event loop put
"add" and "abort" messages in a thread-safe inbox; the engine thread drains it before every
step and hands each step's outputs back to the loop with one ``call_soon_threadsafe``, where they
are appended to each request's ``OutputBuffer``. A reader takes everything its buffer holds as
one output: a reader that fell behind the engine (a slow gRPC write) catches up in one message,
one that keeps up gets each step's tokens as they come; nothing waits to fill a batch. A caller
that stops listening (a cancelled gRPC call) aborts its request, which frees its cache in the
engine's next step.

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


class OutputBuffer:
    """One request's outputs, between the loop's deliveries and the request's one reader."""

    __slots__ = ("_error", "_loop", "_outputs", "_waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._outputs: list[GenerateOutput] = []
        self._error: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None

    def put(self, output: GenerateOutput) -> None:
        self._outputs.append(output)
        self._wake()

    def fail(self, error: Exception) -> None:
        self._error = error
        self._wake()

    async def take(self, timeout_s: float | None) -> GenerateOutput | None:
        """Everything delivered since the last take, as one output; None when nothing came
        within ``timeout_s``. The error, once the outputs before it were taken."""
        if not self._outputs and self._error is None:
            self._waiter = self._loop.create_future()
            timer = None if timeout_s is None else self._loop.call_later(timeout_s, self._wake)
            try:
                await self._waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()
        if self._outputs:
            outputs, self._outputs = self._outputs, []
            return GenerateOutput.joined(outputs)
        if self._error is not None:
            raise self._error
        return None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


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
        self._streams: dict[str, OutputBuffer] = {}
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

    async def generate(
        self, request: GenerateRequest, heartbeat_s: float | None = None
    ) -> AsyncGenerator[GenerateOutput | None]:
        """Stream a request's outputs, each one everything that was ready (see OutputBuffer),
        and None after each ``heartbeat_s`` in which nothing came; leaving early (cancellation,
        error) aborts it."""
        if self.failed:
            raise NotReady(ENGINE_FAILED)
        # reject what can never run before it queues; hash it here, not on the engine thread
        pending = await asyncio.to_thread(self.engine.prepare, request)
        if request.request_id in self._streams:
            raise InvalidInput(f"request id {request.request_id!r} is already running")
        stream = self._streams[request.request_id] = OutputBuffer(self._loop)
        self._inbox.put(("add", pending))
        finished = False
        try:
            while not finished:
                try:
                    output = await stream.take(heartbeat_s)
                except Exception:
                    finished = True  # the engine already dropped it
                    raise
                finished = output is not None and output.finished
                yield output
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
                stream.put(output)

    def _fail_streams(self) -> None:
        for stream in self._streams.values():
            stream.fail(NotReady(ENGINE_FAILED))
        self._on_failure()

    def _deliver_error(self, request_id: str, exc: Exception) -> None:
        stream = self._streams.get(request_id)
        if stream is not None:
            stream.fail(exc)
