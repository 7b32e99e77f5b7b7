"""Errors as the openai SDK sees them: the right status, the right exception class, OpenAI's
error shape, nothing leaked; plus the limits and the cleanup after a client leaves."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.server
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import openai
import pytest

from autoglm.v1 import decoder_pb2, decoder_pb2_grpc
from testkit.media import data_url, image_bytes
from testkit.processes import ServiceProcess
from tests.conftest import Stack
from tests.gateway.conftest import MODEL, STRICT_KEY
from tests.gateway.test_media import png_header_claiming

pytestmark = pytest.mark.stack  # every test here talks to service processes


def user(*content: Any) -> list[Any]:
    return [{"role": "user", "content": list(content)}]


def image(data: bytes, mime: str = "image/png") -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": data_url(data, mime)}}


TEXT = {"type": "text", "text": "hi"}


def url_part(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


BROKEN_AUDIO = {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"n": 100}, "n"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, None),
        ({"messages": user(url_part("data:image/png;base64,QUJD"))}, None),
        ({"messages": user(image(png_header_claiming(20_000, 20_000)))}, None),
        ({"messages": user(url_part("http://169.254.169.254/latest/meta-data"))}, None),
        ({"messages": user(BROKEN_AUDIO)}, None),
        ({"messages": [{"role": "user", "content": "lorem ipsum " * 20_000}]}, None),  # > context
        ({"extra_body": {"best_of": 2}}, "best_of"),
        ({"modalities": ["text", "audio"], "audio": {"voice": "alloy"}}, "audio"),
        ({"response_format": {"type": "grammar"}}, "response_format"),
    ],
    ids=[
        "n",
        "max_tokens",
        "role",
        "broken-image",
        "huge-image",
        "ssrf",
        "audio",
        "too-long",
        "best_of",
        "audio-output",
        "response_format",
    ],
)
def test_bad_requests_are_400(
    client: openai.OpenAI, params: dict[str, Any], param: str | None
) -> None:
    body = {"model": MODEL, "messages": user(TEXT), "max_tokens": 2} | params
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(**body)
    error = caught.value.body
    assert isinstance(error, dict) and set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and caught.value.status_code == 400
    assert "Traceback" not in error["message"] and "0x" not in error["message"]
    if param:
        assert error["param"] == param


def test_a_validators_message_reaches_the_client_as_written(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL, messages=user(TEXT), max_tokens=2, top_logprobs=3
        )
    assert caught.value.body["message"] == "top_logprobs requires logprobs to be true"  # type: ignore[index]


def test_a_wrong_method_is_405_with_allow_and_openai_shape(stack: Stack) -> None:
    reply = httpx.delete(f"{stack.base_url}/chat/completions", timeout=10)
    assert reply.status_code == 405
    assert reply.headers["allow"] == "POST"
    assert reply.json()["error"]["type"] == "invalid_request_error"


def test_max_tokens_beyond_the_context_is_400_as_openai_words_it(
    client: openai.OpenAI, stack: Stack
) -> None:
    context = httpx.get(f"{stack.base_url}/models/{MODEL}", timeout=10).json()["max_model_len"]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=user(TEXT), max_tokens=context)
    assert caught.value.code == "context_length_exceeded"
    assert f"maximum context length is {context} tokens" in caught.value.message
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=MODEL, prompt="hi", max_tokens=context)


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=user(TEXT))
    assert caught.value.code == "model_not_found"


def test_api_key_is_required_when_configured(strict_gateway: ServiceProcess) -> None:
    wrong = openai.OpenAI(base_url=f"{strict_gateway.url}/v1", api_key="EMPTY", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    assert httpx.get(f"{strict_gateway.url}/health", timeout=5).status_code == 200


def test_body_too_large_is_413(strict_client: openai.OpenAI) -> None:
    big = image_bytes(size=(1200, 1200), seed=1) + b"\0" * (1024 * 1024)
    with pytest.raises(openai.APIStatusError) as caught:
        strict_client.chat.completions.create(model=MODEL, messages=user(TEXT, image(big)))
    assert caught.value.status_code == 413


def test_too_many_images_is_400(strict_client: openai.OpenAI) -> None:
    small = image(image_bytes(size=(32, 32)))
    with pytest.raises(openai.BadRequestError, match="3 images"):
        strict_client.chat.completions.create(model=MODEL, messages=user(small, small, small))


@pytest.fixture
def image_host() -> Iterator[str]:
    png = image_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(png)))
            self.end_headers()
            self.wfile.write(png)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/screen.png"
    server.shutdown()


def test_image_urls_from_allowlisted_hosts(
    strict_client: openai.OpenAI, client: openai.OpenAI, image_host: str
) -> None:
    part = {"type": "image_url", "image_url": {"url": image_host}}
    completion = strict_client.chat.completions.create(
        model=MODEL, messages=user(part), max_tokens=1
    )
    assert completion.usage.prompt_tokens_details.image_tokens == 64  # type: ignore[union-attr]
    with pytest.raises(openai.BadRequestError, match="not allowed"):  # empty allowlist
        client.chat.completions.create(model=MODEL, messages=user(part), max_tokens=1)


def test_server_default_keeps_reasoning_inline(strict_client: openai.OpenAI) -> None:
    completion = strict_client.chat.completions.create(
        model=MODEL, messages=user(TEXT), max_tokens=4, temperature=0,
        extra_body={"enable_thinking": True, "ignore_eos": True},
    )  # fmt: skip
    assert (completion.choices[0].message.content or "").startswith("<think>")


def test_an_error_after_streaming_began_is_an_error_event(strict_gateway: ServiceProcess) -> None:
    """The strict gateway's deadline is 3 s; 8000 tokens take longer on the CPU model."""
    body = {
        "model": MODEL, "messages": user(TEXT), "max_tokens": 8000, "stream": True,
        "ignore_eos": True,
    }  # fmt: skip
    headers = {"Authorization": f"Bearer {STRICT_KEY}"}
    with httpx.stream(
        "POST", f"{strict_gateway.url}/v1/chat/completions", json=body, headers=headers, timeout=60
    ) as reply:
        assert reply.status_code == 200
        events = [line for line in reply.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    assert events[-2].startswith('data: {"error"') and "deadline" in events[-2]
    client = openai.OpenAI(base_url=f"{strict_gateway.url}/v1", api_key=STRICT_KEY, max_retries=0)
    with pytest.raises(openai.APIError):
        params = {k: v for k, v in body.items() if k != "ignore_eos"}
        stream = client.chat.completions.create(**params, extra_body={"ignore_eos": True})
        for _ in stream:  # type: ignore[union-attr]
            pass


async def decoder_load(target: str) -> tuple[int, int, int]:
    async with grpc.aio.insecure_channel(target) as channel:
        info = await decoder_pb2_grpc.DecoderStub(channel).Info(decoder_pb2.DecoderInfoRequest())
    return info.running_requests, info.free_cache_tokens, info.total_cache_tokens


async def wait_decoder_busy(target: str) -> None:
    for _ in range(200):
        if (await decoder_load(target))[0] >= 1:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the request never reached the decoder")


@pytest.mark.parametrize("stream", [True, False], ids=["streaming", "not-streaming"])
async def test_a_client_that_leaves_frees_its_decoder_slot(stack: Stack, stream: bool) -> None:
    body = {
        "model": MODEL, "messages": user(TEXT), "max_tokens": 8000, "stream": stream,
        "ignore_eos": True,
    }  # fmt: skip
    async with httpx.AsyncClient(timeout=60) as http:
        request = http.post(f"{stack.base_url}/chat/completions", json=body)
        task = asyncio.ensure_future(request)
        await wait_decoder_busy(stack.decoder.target)
        task.cancel()  # closes the connection mid-generation
        with contextlib.suppress(asyncio.CancelledError):
            await task
    for _ in range(30):  # the cancel reaches the decoder within a few engine steps
        running, free, total = await decoder_load(stack.decoder.target)
        if running == 0 and free == total:
            break
        await asyncio.sleep(0.1)
    assert (running, free) == (0, total)


def test_data_url_must_be_base64(client: openai.OpenAI) -> None:
    raw = "data:image/png," + base64.b64encode(image_bytes()).decode()
    part = {"type": "image_url", "image_url": {"url": raw}}
    with pytest.raises(openai.BadRequestError, match="base64"):
        client.chat.completions.create(model=MODEL, messages=user(part))
