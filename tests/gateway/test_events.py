"""Events that queued up together become one per choice: text joined in order, every token's
logprob kept, the last event's finish reason. A job's stream that fell behind its decoder catches
up in one event (one SSE chunk); one that keeps up gets every step as it comes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

from tokenizers import Tokenizer

from gateway.clients import Deadline
from gateway.events import ChoiceEvent, Counts, coalesced
from gateway.job import Job
from gateway.protocol.chat_completions import ChatCompletionRequest
from gateway.reasoning import Delta, OutputParser
from services.decoder.types import FinishReason, GenerateOutput, GenerateRequest, TokenLogprob

TOKENIZER = Path(__file__).parents[2] / "bundle" / "tokenizer" / "tokenizer.json"


def event(index: int, text: str, finish: str | None = None) -> ChoiceEvent:
    logprobs = tuple(TokenLogprob(ord(c), -1.0) for c in text)
    return ChoiceEvent(index, Delta(content=text, tokens=len(text)), logprobs, finish)


def test_queued_events_become_one_per_choice_in_the_order_the_choices_came() -> None:
    queued = [event(1, "ab"), event(0, "x"), event(1, "c"), event(0, "yz", "length")]
    one, zero = coalesced(queued)
    assert (one.index, one.delta.content, one.delta.tokens, one.finish_reason) == (
        1,
        "abc",
        3,
        None,
    )
    assert (zero.index, zero.delta.content, zero.finish_reason) == (0, "xyz", "length")
    assert [lp.token_id for lp in zero.logprobs] == [ord(c) for c in "xyz"]


def test_a_single_event_is_passed_on_as_it_is() -> None:
    only = event(0, "a")
    assert coalesced([only]) == [only]


class Decoder:
    """The decoder's side of a stream, one message per step: ``ready`` steps at once (a stream
    that fell behind), then one step per turn of the event loop (a stream that keeps up)."""

    def __init__(self, tokenizer: Tokenizer, text: str, ready: int) -> None:
        self.ids = tokenizer.encode(text, add_special_tokens=False).ids
        self.ready = ready

    async def generate(
        self, request: GenerateRequest, request_id: str, deadline: Deadline
    ) -> AsyncIterator[GenerateOutput]:
        for step, token in enumerate(self.ids, 1):
            finish = FinishReason.LENGTH if step == len(self.ids) else None
            logprob = (TokenLogprob(token, -1.0),)
            yield GenerateOutput(request.request_id, (token,), logprob, finish, 3, step)
            if step >= self.ready:
                await asyncio.sleep(0)


async def job_events(tokenizer: Tokenizer, decoder: Decoder) -> list[ChoiceEvent]:
    body = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    )
    job = Job(
        "chatcmpl-1", "r", 0, body, [GenerateRequest("r-0", (1, 2, 3))],
        lambda: OutputParser(tokenizer), decoder, Deadline(60), Counts(3, 0, 0),  # type: ignore[arg-type]
    )  # fmt: skip
    return [event async for event in job.events()]


async def test_steps_that_queued_while_the_response_was_busy_go_out_as_one_chunk() -> None:
    tokenizer = Tokenizer.from_file(str(TOKENIZER))
    text = "one two three four five six seven eight"
    steps = len(tokenizer.encode(text, add_special_tokens=False).ids)
    behind = await job_events(tokenizer, Decoder(tokenizer, text, ready=4))
    assert [e.delta.tokens for e in behind] == [4] + [1] * (steps - 4)
    assert "".join(e.delta.content for e in behind) == text
    assert sum(len(e.logprobs) for e in behind) == steps  # every token's logprob is listed
    keeping_up = await job_events(tokenizer, Decoder(tokenizer, text, ready=1))
    assert [e.delta.tokens for e in keeping_up] == [1] * steps  # nothing waits for a batch
    assert behind[-1].finish_reason == keeping_up[-1].finish_reason == "length"
