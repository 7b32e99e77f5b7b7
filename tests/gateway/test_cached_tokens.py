"""usage.prompt_tokens_details.cached_tokens reports the decoder's prefix cache hits, end to end
through the real four processes: an agent resending its long history gets it served from cache."""

from __future__ import annotations

from typing import Any

import grpc
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from autoglm.v1 import decoder_pb2, decoder_pb2_grpc
from services.decoder.config import DecoderConfig
from testkit.media import data_url, image_bytes
from tests.conftest import Stack
from tests.gateway.conftest import MODEL

pytestmark = pytest.mark.stack  # every test here talks to service processes

BLOCK = DecoderConfig.kv_block_size  # the stack's decoder runs with the default settings
HISTORY = " ".join(f"step {i}: tapped the settings icon and scrolled down." for i in range(40))


def cached(usage: Any) -> int:
    assert usage is not None and usage.prompt_tokens_details is not None
    return int(usage.prompt_tokens_details.cached_tokens)


def test_a_repeated_long_prompt_is_served_from_the_prefix_cache(
    client: openai.OpenAI, stack: Stack
) -> None:
    screenshot = data_url(image_bytes("PNG", seed=7), "image/png")
    messages: list[ChatCompletionMessageParam] = [
        {"role": "system", "content": "You operate a phone. Cached-tokens test. " + HISTORY},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What next?"},
                {"type": "image_url", "image_url": {"url": screenshot}},  # hits too
            ],
        },
    ]
    first = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=2)
    again = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=2)
    assert first.usage is not None and first.usage.prompt_tokens > 10 * BLOCK
    assert cached(first.usage) < first.usage.prompt_tokens // 2  # at most a shared template head
    # every full block but the one holding the last prompt token, which is always computed
    assert cached(again.usage) == (first.usage.prompt_tokens - 1) // BLOCK * BLOCK

    stream = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=2, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    usage = [chunk.usage for chunk in stream if chunk.usage is not None]
    assert [cached(u) for u in usage] == [cached(again.usage)]

    with grpc.insecure_channel(stack.decoder.target) as channel:
        info = decoder_pb2_grpc.DecoderStub(channel).Info(decoder_pb2.DecoderInfoRequest())
    assert info.prefix_caching and info.cached_prefix_tokens >= cached(again.usage)


def test_text_completions_report_cached_tokens_too(client: openai.OpenAI) -> None:
    prompt = "Cached-tokens test for text completions. " + HISTORY
    first = client.completions.create(model=MODEL, prompt=prompt, max_tokens=2)
    again = client.completions.create(model=MODEL, prompt=prompt, max_tokens=2)
    assert first.usage is not None and again.usage is not None
    whole_blocks = (first.usage.prompt_tokens - 1) // BLOCK * BLOCK
    assert cached(again.usage) == whole_blocks > cached(first.usage)
