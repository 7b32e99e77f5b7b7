"""The whole request path on real processes: gateway -> vision, audio -> fusion -> decoder.

These are the walking skeleton's promises; tests/gateway covers the OpenAI surface in depth.
"""

from __future__ import annotations

import httpx
import openai
import pytest
import torch
from transformers import AutoConfig, Wav2Vec2Model

from bundle.layout import Bundle
from testkit.media import audio_bytes, b64, data_url, image_bytes
from tests.conftest import Stack

pytestmark = pytest.mark.stack  # every test here talks to service processes

MODEL = "autoglm-phone-9b"


def image_part(seed: int = 0) -> dict:
    return {
        "type": "image_url",
        "image_url": {"url": data_url(image_bytes(seed=seed), "image/png")},
    }


def audio_part(seconds: float = 1.0) -> dict:
    return {
        "type": "input_audio",
        "input_audio": {"data": b64(audio_bytes(seconds)), "format": "wav"},
    }


def image_tokens(bundle: Bundle) -> int:
    config = AutoConfig.from_pretrained(bundle.vision)
    return int((config.image_size // config.patch_size) ** 2)


def audio_tokens(bundle: Bundle, seconds: float) -> int:
    model = Wav2Vec2Model(AutoConfig.from_pretrained(bundle.audio))
    return int(model._get_feat_extract_output_lengths(torch.tensor(int(seconds * 16000))))


def chat(stack: Stack, content: list[dict] | str, **extra: object) -> dict:
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 4}
    reply = httpx.post(f"{stack.base_url}/chat/completions", json=body | extra, timeout=120)
    assert reply.status_code == 200, reply.text
    return reply.json()


def test_health_is_ok_once_all_three_services_serve(stack: Stack) -> None:
    assert httpx.get(f"{stack.gateway.url}/health", timeout=5).status_code == 200


def test_usage_counts_image_and_audio_placeholder_tokens(stack: Stack, bundle: Bundle) -> None:
    text = {"type": "text", "text": "Describe this."}
    base = chat(stack, [text])["usage"]["prompt_tokens"]
    with_image = chat(stack, [text, image_part()])["usage"]["prompt_tokens"]
    with_both = chat(stack, [text, image_part(), audio_part()])["usage"]["prompt_tokens"]
    # each span is <|begin_of_X|> + one token per embedding row + <|end_of_X|>
    assert with_image - base == image_tokens(bundle) + 2
    assert with_both - with_image == audio_tokens(bundle, 1.0) + 2


@pytest.mark.parametrize(
    "content",
    [
        "Hello there",
        [{"type": "text", "text": "What is in the picture?"}, image_part(1)],
        [{"type": "text", "text": "What did I say?"}, audio_part(0.5)],
        [{"type": "text", "text": "Both:"}, image_part(2), audio_part(0.75)],
    ],
    ids=["text", "image", "audio", "image+audio"],
)
def test_openai_sdk_chat_streaming_and_not(stack: Stack, content: list[dict] | str) -> None:
    client = openai.OpenAI(base_url=stack.base_url, api_key="EMPTY", max_retries=0)
    messages = [{"role": "user", "content": content}]
    completion = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8)  # type: ignore[arg-type]
    choice = completion.choices[0]
    assert choice.finish_reason in ("stop", "length")
    assert completion.usage is not None and completion.usage.completion_tokens >= 1

    stream = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=8, stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] in ("stop", "length")
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == completion.usage.prompt_tokens


def test_greedy_is_deterministic_across_the_stack(stack: Stack) -> None:
    content = [{"type": "text", "text": "Repeat:"}, image_part(3), audio_part(0.5)]
    first = chat(stack, content, temperature=0, max_tokens=12)
    second = chat(stack, content, temperature=0, max_tokens=12)
    assert first["choices"][0]["message"] == second["choices"][0]["message"]
    # the same counts, except that the repeat finds its prompt's full blocks in the prefix cache
    cached = second["usage"]["prompt_tokens_details"].pop("cached_tokens")
    assert first["usage"]["prompt_tokens_details"].pop("cached_tokens") <= cached
    assert cached > 0
    assert first["usage"] == second["usage"]
