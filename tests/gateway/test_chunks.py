"""A streamed token's chunk, written as pre-encoded JSON, is the JSON the response models give
(``ChatCompletionChunk`` dumped without its None fields) and what the openai SDK reads: content,
reasoning under both names, whole tool calls, logprobs with their bytes and top alternatives,
the finish reason; a non-finite logprob is null, as pydantic writes it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import openai.types.chat as sdk
import pytest
from tokenizers import Tokenizer

from gateway.chunks import ChatChunks, LogprobJson, tool_call
from gateway.events import ChoiceEvent
from gateway.reasoning import Delta, token_bytes
from gateway.responses import (
    ChatCompletionChunk,
    ChoiceLogprobs,
    ChunkChoice,
    DeltaMessage,
    TokenLogprob,
    ToolCallDelta,
    TopLogprob,
)
from gateway.tools import ParsedCall
from services.decoder import types as decoder

TOKENIZER = Tokenizer.from_file(
    str(Path(__file__).parents[2] / "bundle" / "tokenizer" / "tokenizer.json")
)
HEAD = {"id": "chatcmpl-1", "model": "m\u00e9", "system_fingerprint": "fp_1"}
# a token that is only the first byte of "é": its text is U+FFFD, its bytes the one byte
HALF = TOKENIZER.token_to_id("\u00c3")


def writer(logprobs: bool) -> ChatChunks:
    return ChatChunks(
        HEAD["id"], 1700000000, HEAD["model"], HEAD["system_fingerprint"],
        LogprobJson(TOKENIZER) if logprobs else None,
    )  # fmt: skip


def entry(token_id: int, logprob: float) -> TopLogprob:
    raw = token_bytes(TOKENIZER, token_id)
    text = raw.decode("utf-8", errors="replace")
    return TopLogprob(token=text, logprob=logprob, bytes=list(raw))


def expected(event: ChoiceEvent, logprobs: bool) -> dict[str, object]:
    """The chunk as the response models dump it."""
    calls = [
        ToolCallDelta(index=k, **tool_call(call).model_dump())
        for k, call in enumerate(event.tool_calls)
    ]
    delta = DeltaMessage(
        content=event.delta.content or None,
        tool_calls=calls or None,
        reasoning_content=event.delta.reasoning or None,
        reasoning=event.delta.reasoning or None,
    )
    content = [
        TokenLogprob(
            **entry(lp.token_id, lp.logprob).model_dump(),
            top_logprobs=[entry(t, p) for t, p in lp.top_logprobs],
        )
        for lp in event.logprobs
    ]
    choice = ChunkChoice(
        index=event.index,
        delta=delta,
        logprobs=ChoiceLogprobs(content=content) if logprobs else None,
        finish_reason=event.finish_reason,  # type: ignore[arg-type]
    )
    chunk = ChatCompletionChunk(**HEAD, created=1700000000, choices=[choice])
    return json.loads(chunk.model_dump_json(exclude_none=True))


EVENTS = [
    ChoiceEvent(0, Delta('h\u00e9llo "q"\n\x01', "", 1), (decoder.TokenLogprob(HALF, -0.25),)),
    ChoiceEvent(
        1,
        Delta("", "let me think", 2),
        (
            decoder.TokenLogprob(100, -1e-7, ((100, -1e-7), (HALF, -2.5), (7, -math.inf))),
            decoder.TokenLogprob(0, -math.inf),
        ),
    ),
    ChoiceEvent(0, Delta("", "", 1), (decoder.TokenLogprob(5, -0.5),), "length"),
    ChoiceEvent(
        2,
        Delta("", "", 1),
        (decoder.TokenLogprob(9, -0.125),),
        "tool_calls",
        (ParsedCall("call_a", "tap", '{"x": 1}'), ParsedCall("call_b", "\u00e9", "{}")),
    ),
]


@pytest.mark.parametrize("logprobs", [True, False])
@pytest.mark.parametrize("event", EVENTS, ids=range(len(EVENTS)))
def test_a_chunk_is_the_json_the_response_models_give(event: ChoiceEvent, logprobs: bool) -> None:
    sse = writer(logprobs).event(event)
    assert sse.startswith("data: ") and sse.endswith("}\n\n")
    assert json.loads(sse.removeprefix("data: ")) == expected(event, logprobs)


def test_the_openai_sdk_reads_a_chunk_with_logprobs() -> None:
    event = ChoiceEvent(
        0, Delta("ok", "why", 1), (decoder.TokenLogprob(HALF, -0.25, ((HALF, -0.25), (7, -3.0))),)
    )
    read = sdk.ChatCompletionChunk.model_validate_json(
        writer(True).event(event).removeprefix("data: ")
    )
    (choice,) = read.choices
    assert choice.delta.content == "ok" and choice.finish_reason is None
    assert choice.delta.model_extra == {"reasoning_content": "why", "reasoning": "why"}
    assert choice.logprobs is not None and choice.logprobs.content is not None
    (token,) = choice.logprobs.content
    assert (token.token, token.bytes, token.logprob) == ("\ufffd", [0xC3], -0.25)
    assert [(top.bytes, top.logprob) for top in token.top_logprobs] == [
        ([0xC3], -0.25),
        (list(token_bytes(TOKENIZER, 7)), -3.0),
    ]
