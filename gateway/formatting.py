"""A job's events -> OpenAI responses: one JSON body, or server-sent events.

Streams follow OpenAI's framing: ``created`` is the same on every chunk, each choice opens with
a role chunk, ends with a chunk carrying its ``finish_reason``, then (``include_usage``) one chunk
with ``choices: []`` and the usage, then ``data: [DONE]``. An error after the stream began is sent
as one ``data: {"error": ...}`` event (the status line has gone out already), then ``[DONE]``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator, Sequence

from pydantic import BaseModel
from tokenizers import Tokenizer

from gateway.chunks import ChatChunks, LogprobJson, tool_call
from gateway.errors import map_exception
from gateway.events import ChoiceEvent, Counts
from gateway.job import Job
from gateway.reasoning import token_bytes
from gateway.responses import (
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatMessage,
    ChoiceLogprobs,
    ChunkChoice,
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    CompletionTokensDetails,
    DeltaMessage,
    PromptTokensDetails,
    TokenLogprob,
    TopLogprob,
    Usage,
)
from gateway.tools import ParsedCall
from services.decoder import types as decoder

log = logging.getLogger(__name__)
DONE = "data: [DONE]\n\n"


@dataclasses.dataclass(frozen=True)
class Formatter:
    model: str
    system_fingerprint: str
    tokenizer: Tokenizer
    logprob_json: LogprobJson = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "logprob_json", LogprobJson(self.tokenizer))

    # --- shared ------------------------------------------------------------------------------

    def usage(self, counts: Counts) -> Usage:
        return Usage(
            prompt_tokens=counts.prompt_tokens,
            completion_tokens=counts.completion_tokens,
            total_tokens=counts.prompt_tokens + counts.completion_tokens,
            prompt_tokens_details=PromptTokensDetails(
                cached_tokens=counts.cached_tokens,
                image_tokens=counts.image_tokens,
                audio_tokens=counts.audio_tokens,
            ),
            completion_tokens_details=CompletionTokensDetails(
                reasoning_tokens=counts.reasoning_tokens
            ),
        )

    def _text(self, token_id: int) -> str:
        return token_bytes(self.tokenizer, token_id).decode("utf-8", errors="replace")

    def _token(self, token_id: int, logprob: float) -> TopLogprob:
        raw = token_bytes(self.tokenizer, token_id)
        return TopLogprob(
            token=raw.decode("utf-8", errors="replace"), logprob=logprob, bytes=list(raw)
        )

    def chat_logprobs(self, logprobs: Sequence[decoder.TokenLogprob]) -> list[TokenLogprob]:
        return [
            TokenLogprob(
                **self._token(lp.token_id, lp.logprob).model_dump(),
                top_logprobs=[self._token(t, p) for t, p in lp.top_logprobs],
            )
            for lp in logprobs
        ]

    def completion_logprobs(
        self, logprobs: Sequence[decoder.TokenLogprob], offset: int
    ) -> CompletionLogprobs:
        out = CompletionLogprobs()
        for lp in logprobs:
            token = self._text(lp.token_id)
            out.tokens.append(token)
            out.token_logprobs.append(lp.logprob)
            out.top_logprobs.append({self._text(t): p for t, p in lp.top_logprobs})
            out.text_offset.append(offset)
            offset += len(token)
        return out

    # --- chat completions --------------------------------------------------------------------

    async def chat_completion(self, job: Job, events: AsyncIterator[ChoiceEvent]) -> ChatCompletion:
        wants_logprobs = job.params.wants_logprobs()[0]
        choices = [
            ChatChoice(
                index=i,
                message=ChatMessage(
                    content=None if c.tool_calls and not c.content else c.content,
                    tool_calls=[tool_call(call) for call in c.tool_calls] or None,
                    reasoning_content=c.reasoning or None,
                    reasoning=c.reasoning or None,
                ),
                logprobs=ChoiceLogprobs(content=self.chat_logprobs(c.logprobs))
                if wants_logprobs
                else None,
                finish_reason=c.finish_reason,  # type: ignore[arg-type]
            )
            for i, c in enumerate(await _collect(job, events))
        ]
        return ChatCompletion(
            id=job.id,
            created=job.created,
            model=self.model,
            system_fingerprint=self.system_fingerprint,
            choices=choices,
            usage=self.usage(job.counts),
        )

    def _chunk(self, job: Job, choices: list[ChunkChoice], usage: Usage | None = None) -> str:
        chunk = ChatCompletionChunk(
            id=job.id, created=job.created, model=self.model,
            system_fingerprint=self.system_fingerprint, choices=choices, usage=usage,
        )  # fmt: skip
        return _event(chunk)

    async def chat_stream(self, job: Job, events: AsyncIterator[ChoiceEvent]) -> AsyncIterator[str]:
        wants_logprobs = job.params.wants_logprobs()[0]
        chunks = ChatChunks(
            job.id, job.created, self.model, self.system_fingerprint,
            self.logprob_json if wants_logprobs else None,
        )  # fmt: skip

        async def body() -> AsyncIterator[str]:
            for i in range(len(job.generate_requests)):
                opening = DeltaMessage(role="assistant", content="")
                yield self._chunk(job, [ChunkChoice(index=i, delta=opening)])
            async for event in events:
                delta = event.delta
                if delta.content or delta.reasoning or event.finish_reason or event.logprobs:
                    yield chunks.event(event)
            if job.params.include_usage:
                yield self._chunk(job, [], self.usage(job.counts))

        async for line in _guarded(body()):
            yield line

    # --- text completions --------------------------------------------------------------------

    def _completion(
        self, job: Job, choices: list[CompletionChoice], usage: Usage | None
    ) -> Completion:
        return Completion(
            id=job.id, created=job.created, model=self.model,
            system_fingerprint=self.system_fingerprint, choices=choices, usage=usage,
        )  # fmt: skip

    async def completion(self, job: Job, events: AsyncIterator[ChoiceEvent]) -> Completion:
        wants_logprobs = job.params.wants_logprobs()[0]
        choices = [
            CompletionChoice(
                index=i,
                text=c.content,
                logprobs=self.completion_logprobs(c.logprobs, 0) if wants_logprobs else None,
                finish_reason=c.finish_reason,  # type: ignore[arg-type]
            )
            for i, c in enumerate(await _collect(job, events))
        ]
        return self._completion(job, choices, self.usage(job.counts))

    async def completion_stream(
        self, job: Job, events: AsyncIterator[ChoiceEvent]
    ) -> AsyncIterator[str]:
        wants_logprobs = job.params.wants_logprobs()[0]
        offsets = [0] * len(job.generate_requests)

        async def body() -> AsyncIterator[str]:
            async for event in events:
                if not (event.delta.content or event.finish_reason or event.logprobs):
                    continue
                logprobs = None
                if wants_logprobs:
                    logprobs = self.completion_logprobs(event.logprobs, offsets[event.index])
                offsets[event.index] += len(event.delta.content)
                choice = CompletionChoice(
                    index=event.index, text=event.delta.content, logprobs=logprobs,
                    finish_reason=event.finish_reason,  # type: ignore[arg-type]
                )  # fmt: skip
                yield _event(self._completion(job, [choice], None))
            if job.params.include_usage:
                yield _event(self._completion(job, [], self.usage(job.counts)))

        async for line in _guarded(body()):
            yield line


def _event(payload: BaseModel) -> str:
    return f"data: {payload.model_dump_json(exclude_none=True)}\n\n"


async def _guarded(lines: AsyncIterator[str]) -> AsyncIterator[str]:
    """The stream, then [DONE]; an error midway becomes an error event (one mapper)."""
    try:
        async for line in lines:
            yield line
    except Exception as exc:
        log.warning("stream failed after it began: %s", type(exc).__name__)
        yield _event(map_exception(exc).body)
    yield DONE


@dataclasses.dataclass
class _Collected:
    """One choice of a non-streamed response, gathered from its events."""

    content: str = ""
    reasoning: str = ""
    logprobs: list[decoder.TokenLogprob] = dataclasses.field(default_factory=list)
    finish_reason: str = "length"
    tool_calls: tuple[ParsedCall, ...] = ()


async def _collect(job: Job, events: AsyncIterator[ChoiceEvent]) -> list[_Collected]:
    choices = [_Collected() for _ in job.generate_requests]
    async for event in events:
        choice = choices[event.index]
        choice.content += event.delta.content
        choice.reasoning += event.delta.reasoning
        choice.logprobs += event.logprobs
        choice.finish_reason = event.finish_reason or choice.finish_reason
        choice.tool_calls += event.tool_calls
    return choices
