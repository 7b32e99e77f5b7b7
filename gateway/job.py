"""``Job``: a prepared request run on the decoder, its n choices at once, each choice's tokens
detokenized, stop-string-trimmed, split into content and reasoning (and tool calls) as they
come."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncGenerator, AsyncIterator, Callable

from gateway.clients import Deadline, ServiceClients
from gateway.events import ChoiceEvent, Counts, coalesced
from gateway.protocol.common import GenerationParams
from gateway.reasoning import OutputParser
from gateway.tools import CallExtractor, ParsedCall
from services.decoder.types import GenerateRequest


@dataclasses.dataclass
class Job:
    """A prepared request; ``events()`` may be iterated once."""

    id: str
    request_id: str  # the client's (or a fresh) id, sent to every service as x-request-id
    created: int
    params: GenerationParams
    generate_requests: list[GenerateRequest]
    new_parser: Callable[[], OutputParser]
    clients: ServiceClients
    deadline: Deadline
    counts: Counts
    new_extractor: Callable[[], CallExtractor] | None = None  # when tool calls are parsed

    async def events(self) -> AsyncGenerator[ChoiceEvent]:
        """Every choice's events as they come; closing this early cancels every decoder call.
        Events that queued while the caller was busy (writing the last chunk) come as one per
        choice, so a stream that fell behind catches up in one chunk; none is ever waited for."""
        queue: asyncio.Queue[ChoiceEvent | BaseException | None] = asyncio.Queue()

        async def produce(index: int) -> None:
            try:
                async for event in self._choice(index):
                    await queue.put(event)
                await queue.put(None)
            except Exception as exc:
                await queue.put(exc)

        tasks = [asyncio.create_task(produce(i)) for i in range(len(self.generate_requests))]
        try:
            running = len(tasks)
            while running:
                items = [await queue.get()]
                while not queue.empty():
                    items.append(queue.get_nowait())
                for event in coalesced([i for i in items if isinstance(i, ChoiceEvent)]):
                    yield event
                for item in items:
                    if item is None:
                        running -= 1
                    elif isinstance(item, BaseException):
                        raise item
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _choice(self, index: int) -> AsyncIterator[ChoiceEvent]:
        parser = self.new_parser()
        extractor = self.new_extractor() if self.new_extractor else None
        request = self.generate_requests[index]
        stream = self.clients.generate(request, self.request_id, self.deadline)
        async with contextlib.aclosing(stream):
            async for output in stream:
                # the prompt is counted once for all n choices: report the best reuse
                self.counts.cached_tokens = max(self.counts.cached_tokens, output.cached_tokens)
                delta = parser.feed(output.token_ids)
                self.counts.completion_tokens += delta.tokens
                finish = "stop" if parser.stopped else None
                if finish is None and output.finish_reason is not None:
                    tail = parser.finish()
                    delta.content += tail.content
                    delta.reasoning += tail.reasoning
                    finish = output.finish_reason.value
                calls: list[ParsedCall] = []
                if extractor is not None:
                    delta.content = extractor.feed(delta.content)
                    if finish is not None:
                        held, calls = extractor.finish()
                        delta.content += held
                        finish = "tool_calls" if calls else finish
                if finish is not None:
                    self.counts.reasoning_tokens += parser.reasoning_tokens
                logprobs = output.logprobs[: delta.tokens]
                yield ChoiceEvent(index, delta, logprobs, finish, tuple(calls))
                if finish is not None:
                    return
        raise RuntimeError("the decoder's stream ended without a finish reason")
