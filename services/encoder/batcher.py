"""Dynamic batching across Encode calls: concurrent requests share the tower's forward passes.

Each call's items are checked and decoded by themselves (on a thread of the loop's default
pool: file decoding is not torch work), so a bad file fails only its own call. The decoded
inputs then queue, and the tower encodes the inputs of every call waiting at that moment in one
``encode`` (up to ``max_batch_items``, however many a single call brings) on the one model
worker thread, and each call gets its own slice back. Nothing waits for a batch to fill: a lone
call runs at once, and the calls that arrive while the tower is busy form the next batch.
A call cancelled while it waits is dropped before its batch runs. At most ``max_waiting_calls``
calls wait (decoding or queued); past that a new call is refused at once with ``Overloaded``
(RESOURCE_EXHAUSTED, HTTP 429 at the gateway), so a burst cannot pile up decoded media.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import logging
from typing import Any, Generic, Protocol, TypeVar

from services.common.errors import Overloaded
from services.encoder.types import Embedding, MediaItem

log = logging.getLogger(__name__)


class BatchEncoder(Protocol):
    """What the batcher needs of an encoder (pipeline.MediaEncoder is one): per-call decoding,
    and one tower pass over any number of decoded inputs."""

    def decode_all(self, items: list[MediaItem]) -> list[Any]: ...

    def encode(self, inputs: list[Any], /) -> list[Embedding]: ...


E = TypeVar("E", bound=BatchEncoder)


# eq=False: a call is found in the queue by identity (comparing its inputs, tensors, raises)
@dataclasses.dataclass(frozen=True, eq=False)
class _Call:
    inputs: list[Any]
    result: asyncio.Future[list[Embedding]]


class EncodeBatcher(Generic[E]):
    def __init__(
        self,
        encoder: E,
        worker: concurrent.futures.Executor,
        max_batch_items: int,
        max_waiting_calls: int,
    ) -> None:
        if max_batch_items < 1 or max_waiting_calls < 1:
            raise ValueError("max_batch_items and max_waiting_calls must be at least 1")
        self.encoder = encoder
        self.worker = worker
        self.max_batch_items = max_batch_items
        self.max_waiting_calls = max_waiting_calls
        self._waiting = 0  # calls decoding or queued, not yet taken into a batch
        self._queue: collections.deque[_Call] = collections.deque()
        self._drainer: asyncio.Task[None] | None = None
        self.batches = 0  # tower calls made, for tests and logs

    async def __call__(self, items: list[MediaItem]) -> list[Embedding]:
        if self._waiting >= self.max_waiting_calls:
            raise Overloaded(f"{self._waiting} encode calls are already waiting; retry later")
        loop = asyncio.get_running_loop()
        self._waiting += 1
        try:
            inputs = await loop.run_in_executor(None, self.encoder.decode_all, items)
        except BaseException as exc:
            self._waiting -= 1
            _log_cancelled(exc, len(items), "while decoding")
            raise
        call = _Call(inputs, loop.create_future())
        self._queue.append(call)
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain())
        try:
            return await call.result
        except BaseException as exc:
            # cancelling the caller cancels the future; a call still queued leaves the queue now
            if call in self._queue:
                self._queue.remove(call)
                self._waiting -= 1
            _log_cancelled(exc, len(items), "before its batch ran")
            raise

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while batch := self._next_batch():
            inputs = [x for call in batch for x in call.inputs]
            try:
                outputs = await loop.run_in_executor(self.worker, self.encoder.encode, inputs)
            except Exception as exc:  # the tower failed: every call of the batch hears why
                for call in batch:
                    if not call.result.done():
                        call.result.set_exception(exc)
                continue
            finally:
                self.batches += 1
            start = 0
            for call in batch:
                end = start + len(call.inputs)
                if not call.result.done():
                    call.result.set_result(outputs[start:end])
                start = end

    def _next_batch(self) -> list[_Call]:
        """The waiting calls, oldest first, up to max_batch_items inputs (at least one call)."""
        batch: list[_Call] = []
        count = 0
        while self._queue:
            call = self._queue[0]
            if batch and count + len(call.inputs) > self.max_batch_items:
                break
            batch.append(self._queue.popleft())
            self._waiting -= 1
            count += len(call.inputs)
        return batch


def _log_cancelled(exc: BaseException, items: int, when: str) -> None:
    """A caller that went away (its client disconnected): its work stops here."""
    if isinstance(exc, asyncio.CancelledError):
        log.info("an encode call of %d items was cancelled by its caller %s", items, when)
