"""Text completions, models, health and the OpenAPI document, through real clients."""

from __future__ import annotations

import httpx
import openai
import pytest
from openai.types import Completion

from testkit.media import audio_bytes, b64, data_url, image_bytes
from tests.conftest import Stack
from tests.gateway.conftest import MODEL

pytestmark = pytest.mark.stack  # every test here talks to service processes


def test_models_list_and_retrieve(client: openai.OpenAI) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


def test_text_completion_streaming_and_not(client: openai.OpenAI) -> None:
    raw = client.completions.with_raw_response.create(
        model=MODEL, prompt="[gMASK]<sop>Once upon a time", max_tokens=8, temperature=0,
        logprobs=2, extra_body={"ignore_eos": True},
    )  # fmt: skip
    completion = raw.parse()
    assert completion.to_dict() == raw.http_response.json()
    assert (
        completion.object == "text_completion" and completion.choices[0].finish_reason == "length"
    )
    logprobs = completion.choices[0].logprobs
    assert logprobs is not None and len(logprobs.token_logprobs or []) == 8
    assert all(len(top) <= 2 for top in logprobs.top_logprobs or [])
    chunks = list(
        client.completions.create(
            model=MODEL, prompt="[gMASK]<sop>Once upon a time", max_tokens=8, temperature=0,
            stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
        )
    )  # fmt: skip
    assert "".join(c.choices[0].text for c in chunks if c.choices) == completion.choices[0].text
    assert chunks[-1].usage == completion.usage and chunks[-1].choices == []
    assert len({c.created for c in chunks}) == 1
    assert isinstance(chunks[0], Completion)


def test_health_names_each_service(stack: Stack) -> None:
    reply = httpx.get(f"{stack.gateway.url}/health", timeout=5)
    assert reply.status_code == 200
    names = ("autoglm.v1.VisionEncoder", "autoglm.v1.AudioEncoder", "autoglm.v1.Decoder")
    assert reply.json()["services"] == dict.fromkeys(names, True)


def test_openapi_document_is_truthful(stack: Stack) -> None:
    spec = httpx.get(f"{stack.gateway.url}/openapi.json", timeout=5).json()
    paths = spec["paths"]
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/models/{model_id}"):
        assert path in paths
    assert "/health" in paths
    chat = paths["/v1/chat/completions"]["post"]
    assert "422" not in chat["responses"] and "400" in chat["responses"]
    assert set(chat["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}
    schemas = spec["components"]["schemas"]
    assert "ChatCompletionRequest" in schemas and "HTTPValidationError" not in schemas
    for name in ("enable_thinking", "return_reasoning", "keep_reasoning_inline", "stream_options"):
        assert name in schemas["ChatCompletionRequest"]["properties"]


def test_tokenize_counts_media_as_the_chat_prompt_does(client: openai.OpenAI, stack: Stack) -> None:
    """An image and a clip: /tokenize's count is the chat completion's usage.prompt_tokens."""
    image = {"type": "image_url", "image_url": {"url": data_url(image_bytes(), "image/png")}}
    clip = {"type": "input_audio", "input_audio": {"data": b64(audio_bytes()), "format": "wav"}}
    messages = [{"role": "user", "content": [image, {"type": "text", "text": "what?"}, clip]}]
    counted = httpx.post(f"{stack.gateway.url}/tokenize", json={"messages": messages}, timeout=60)
    assert counted.status_code == 200, counted.text
    chat = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=1)  # type: ignore[arg-type]
    assert chat.usage is not None
    assert counted.json()["count"] == chat.usage.prompt_tokens
    assert counted.json()["max_model_len"] > chat.usage.prompt_tokens
