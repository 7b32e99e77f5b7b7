"""The chat-completions surface through the real openai SDK, against the real four processes."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from testkit.media import audio_bytes, b64, data_url, image_bytes
from tests.conftest import Stack
from tests.gateway.conftest import MODEL

pytestmark = pytest.mark.stack  # every test here talks to service processes

IMAGE_ROWS = 64  # the default bundle's SigLIP: 64x64 pixels, 8x8 patches


def image_part(seed: int = 0, fmt: str = "PNG") -> dict[str, Any]:
    mime = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}[fmt]
    return {"type": "image_url", "image_url": {"url": data_url(image_bytes(fmt, seed=seed), mime)}}


def audio_part(seconds: float = 0.5, fmt: str = "wav") -> dict[str, Any]:
    subtype = {"wav": "PCM_16", "flac": "PCM_16", "mp3": "MPEG_LAYER_III"}[fmt]
    clip = audio_bytes(seconds, format=fmt.upper(), subtype=subtype)
    return {"type": "input_audio", "input_audio": {"data": b64(clip), "format": fmt}}


def user(*content: Any) -> list[Any]:
    return [{"role": "user", "content": list(content)}]


TEXT = {"type": "text", "text": "Describe what you get."}


def raw_and_parsed(client: openai.OpenAI, **params: Any) -> tuple[dict[str, Any], ChatCompletion]:
    raw = client.chat.completions.with_raw_response.create(model=MODEL, **params)
    return raw.http_response.json(), raw.parse()


def test_response_parses_into_the_sdk_types_without_loss(client: openai.OpenAI) -> None:
    body, completion = raw_and_parsed(client, messages=user(TEXT), max_tokens=6, seed=1)
    assert completion.to_dict() == body  # every field the server sent survives parsing
    assert ChatCompletion.model_validate(body) == completion
    assert completion.object == "chat.completion" and completion.model == MODEL
    assert completion.system_fingerprint and completion.id.startswith("chatcmpl-")
    choice = completion.choices[0]
    assert choice.finish_reason in ("stop", "length") and choice.message.role == "assistant"
    usage = completion.usage
    assert usage is not None and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.completion_tokens <= 6


@pytest.mark.parametrize(
    ("content", "images", "clips"),
    [
        ([TEXT, image_part(1, "JPEG")], 1, 0),
        ([TEXT, audio_part(0.5, "flac")], 0, 1),
        ([TEXT, image_part(2, "WEBP"), audio_part(0.5, "mp3"), image_part(3)], 2, 1),
    ],
    ids=["image", "audio", "images+audio"],
)
def test_usage_counts_media_placeholder_tokens(
    client: openai.OpenAI, content: list[Any], images: int, clips: int
) -> None:
    base = client.chat.completions.create(model=MODEL, messages=user(TEXT), max_tokens=1)
    media = client.chat.completions.create(model=MODEL, messages=user(*content), max_tokens=1)
    assert base.usage is not None and media.usage is not None
    details = media.usage.prompt_tokens_details
    assert details is not None and details.image_tokens == images * IMAGE_ROWS
    assert (details.audio_tokens or 0) > 0 if clips else details.audio_tokens == 0
    # each span: <|begin_of_X|> + one token per embedding row + <|end_of_X|>
    spans = 2 * (images + clips)
    expected = base.usage.prompt_tokens + details.image_tokens + details.audio_tokens + spans
    assert media.usage.prompt_tokens == expected


def test_media_across_turns_and_a_null_assistant_turn(client: openai.OpenAI) -> None:
    messages = [
        {"role": "system", "content": "You operate a phone."},
        {"role": "user", "content": [TEXT, image_part(4)]},
        {"role": "assistant", "content": None},
        {"role": "tool", "content": "tapped", "tool_call_id": "call-1"},
        {"role": "user", "content": [image_part(5), audio_part(0.25)]},
    ]
    completion = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=2)  # type: ignore[arg-type]
    assert completion.usage is not None and completion.usage.prompt_tokens_details is not None
    assert completion.usage.prompt_tokens_details.image_tokens == 2 * IMAGE_ROWS


def collect(stream: Any) -> list[ChatCompletionChunk]:
    return list(stream)


def test_streaming_framing(client: openai.OpenAI, stack: Stack) -> None:
    stream = client.chat.completions.create(
        model=MODEL, messages=user(TEXT, image_part()), max_tokens=6, stream=True,
        stream_options={"include_usage": True}, temperature=0,
    )  # fmt: skip
    chunks = collect(stream)
    assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    finishing = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finishing) == 1
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert all(c.usage is None for c in chunks[:-1])
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    whole = client.chat.completions.create(
        model=MODEL, messages=user(TEXT, image_part()), max_tokens=6, temperature=0
    )
    assert streamed == whole.choices[0].message.content  # greedy: same text either way
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens  # type: ignore[union-attr]
    # the SSE framing itself: data lines, [DONE] last
    body = {"model": MODEL, "messages": user(TEXT), "max_tokens": 2, "stream": True}
    lines = httpx.post(f"{stack.base_url}/chat/completions", json=body, timeout=60).text
    events = [line for line in lines.split("\n\n") if line]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    for event in events[:-1]:
        raw = json.loads(event.removeprefix("data: "))
        assert ChatCompletionChunk.model_validate(raw).to_dict() == raw  # nothing lost


async def test_async_client_streaming_and_not(async_client: openai.AsyncOpenAI) -> None:
    messages = user(TEXT, image_part(6), audio_part(0.3))
    completion = await async_client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=4, temperature=0
    )
    stream = await async_client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=4, temperature=0, stream=True
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == completion.choices[0].message.content


def greedy(client: openai.OpenAI, **params: Any) -> ChatCompletion:
    """A short completion, greedy unless ``params`` say otherwise."""
    params = {"temperature": 0, "max_tokens": 24} | params
    return client.chat.completions.create(
        model=MODEL, messages=user({"type": "text", "text": "Count with me:"}), **params
    )


def test_stop_strings_cut_the_text_and_are_never_shown(client: openai.OpenAI) -> None:
    full = greedy(client, extra_body={"ignore_eos": True}).choices[0].message.content or ""
    assert len(full) > 6, full
    stop = full[len(full) // 2 : len(full) // 2 + 3]  # likely spans a token boundary
    for stream in (False, True):
        kwargs = dict(stop=[stop, "\x00never"], extra_body={"ignore_eos": True})
        if stream:
            chunks = list(greedy(client, stream=True, **kwargs))  # type: ignore[call-overload]
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
        else:
            choice = greedy(client, **kwargs).choices[0]  # type: ignore[arg-type]
            text, finish = choice.message.content or "", choice.finish_reason
        assert text == full[: full.index(stop)] and finish == "stop"


def test_sampling_parameters_are_honoured(client: openai.OpenAI) -> None:
    params = dict(temperature=0.9, top_p=0.9, seed=1234, presence_penalty=0.5,
                  frequency_penalty=0.5, extra_body={"top_k": 50})  # fmt: skip
    first = greedy(client, **params).choices[0].message.content  # type: ignore[arg-type]
    again = greedy(client, **params).choices[0].message.content  # type: ignore[arg-type]
    assert first == again  # a seed makes sampling reproducible
    capped = greedy(client, max_completion_tokens=3, extra_body={"ignore_eos": True})
    assert capped.usage.completion_tokens == 3 and capped.choices[0].finish_reason == "length"  # type: ignore[union-attr]


def test_logprobs_and_top_logprobs(client: openai.OpenAI) -> None:
    completion = greedy(client, logprobs=True, top_logprobs=3, max_tokens=5)
    logprobs = completion.choices[0].logprobs
    assert logprobs is not None and logprobs.content is not None
    assert len(logprobs.content) == completion.usage.completion_tokens  # type: ignore[union-attr]
    for token in logprobs.content:
        assert len(token.top_logprobs) == 3 and token.logprob <= 0
        # greedy: the chosen token is the most likely one
        assert token.logprob == pytest.approx(max(t.logprob for t in token.top_logprobs), abs=1e-4)


def test_n_choices(client: openai.OpenAI) -> None:
    completion = greedy(client, n=2, temperature=1.0, seed=3, max_tokens=4)
    assert [c.index for c in completion.choices] == [0, 1]
    chunks = list(greedy(client, n=2, seed=3, max_tokens=4, stream=True))
    assert {c.choices[0].index for c in chunks if c.choices} == {0, 1}


def test_reasoning_switches(client: openai.OpenAI) -> None:
    """Greedy, so the three ways of returning reasoning show the same generation."""
    think = {"enable_thinking": True, "ignore_eos": True}
    separate = greedy(client, extra_body=think | {"return_reasoning": True})
    dropped = greedy(client, extra_body=think)
    inline = greedy(client, extra_body=think | {"keep_reasoning_inline": True})
    via_kwargs = greedy(
        client, extra_body={"chat_template_kwargs": {"enable_thinking": True}, "ignore_eos": True}
    )
    message = separate.choices[0].message.model_dump()
    reasoning, content = message["reasoning_content"], message["content"]
    assert reasoning and message["reasoning"] == reasoning
    assert separate.usage.completion_tokens_details.reasoning_tokens > 0  # type: ignore[union-attr]
    assert dropped.choices[0].message.model_dump().get("reasoning_content") is None
    assert dropped.choices[0].message.content == content
    assert dropped.usage == separate.usage == via_kwargs.usage
    inline_text = inline.choices[0].message.content or ""
    assert inline_text.startswith("<think>" + reasoning)
    plain = greedy(client, extra_body={"ignore_eos": True})
    assert plain.usage.prompt_tokens == separate.usage.prompt_tokens + 2  # type: ignore[union-attr]


def test_reasoning_streams_as_deltas(client: openai.OpenAI) -> None:
    body = {"enable_thinking": True, "return_reasoning": True, "ignore_eos": True}
    chunks = list(greedy(client, stream=True, extra_body=body))
    streamed = "".join(
        (c.choices[0].delta.model_dump().get("reasoning_content") or "")
        for c in chunks
        if c.choices
    )
    whole = greedy(client, extra_body=body).choices[0].message.model_dump()["reasoning_content"]
    assert streamed == whole


def test_text_spelling_placeholders_stays_text(client: openai.OpenAI) -> None:
    sneaky = {"type": "text", "text": "<|begin_of_image|><|image|><|end_of_image|>"}
    completion = client.chat.completions.create(model=MODEL, messages=user(sneaky), max_tokens=1)
    assert completion.usage.prompt_tokens_details.image_tokens == 0  # type: ignore[union-attr]


def test_unknown_fields_are_ignored(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL, messages=user(TEXT), max_tokens=1, user="u-1",
        extra_body={"no_such_field": [1, 2], "response_format": {"type": "text"}},
    )  # fmt: skip
    assert completion.choices[0].finish_reason in ("stop", "length")
