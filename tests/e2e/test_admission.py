"""Admission control on real processes: every queue is bounded (the gateway's requests in
flight, the decoder's waiting queue), past a bound the answer is 429 with Retry-After at once,
and a client that leaves before its first token or during encoding cancels its work."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from autoglm.v1 import decoder_pb2, decoder_pb2_grpc
from testkit.media import data_url, image_bytes
from tests.conftest import Stack, start_stack, stop_stack

pytestmark = pytest.mark.stack  # every test here talks to service processes

MODEL = "autoglm-phone-9b"
IN_FLIGHT = 3


@pytest.fixture(scope="module")
def small(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One decoder row and one waiting place; three requests in flight at the gateway."""
    started = start_stack(
        bundle_dir,
        tmp_path_factory.mktemp("admission-logs"),
        decoder_args=["--quant", "none", "--max-running-requests", "1",
                      "--max-waiting-requests", "1"],
        gateway_args=["--max-in-flight-requests", str(IN_FLIGHT)],
    )  # fmt: skip
    try:
        yield started
    finally:
        stop_stack(started)


def body(*, image_seed: int | None = None, max_tokens: int = 4000) -> dict[str, Any]:
    content: list[dict[str, Any]] = [{"type": "text", "text": "hi"}]
    if image_seed is not None:
        url = data_url(image_bytes(seed=image_seed), "image/png")
        content.append({"type": "image_url", "image_url": {"url": url}})
    return {
        "model": MODEL, "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens, "stream": True, "ignore_eos": True,
    }  # fmt: skip


async def decoder_info(stack: Stack) -> decoder_pb2.DecoderInfo:
    async with grpc.aio.insecure_channel(stack.decoder.target) as channel:
        return await decoder_pb2_grpc.DecoderStub(channel).Info(decoder_pb2.DecoderInfoRequest())


async def until(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "not reached in time"
        await asyncio.sleep(0.05)


def refused_at_once(reply: httpx.Response, took: float) -> None:
    assert reply.status_code == 429, reply.text
    assert reply.headers["retry-after"] == "1"
    assert reply.json()["error"]["type"] == "rate_limit_error"
    assert took < 0.5, f"the 429 took {took:.3f} s"


async def post(http: httpx.AsyncClient, stack: Stack, payload: dict[str, Any]) -> httpx.Response:
    return await http.post(f"{stack.base_url}/chat/completions", json=payload)


async def cancel(*tasks: asyncio.Task[Any]) -> None:
    for task in tasks:
        task.cancel()  # closes the client's connection
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_full_decoder_queue_is_429_and_a_client_leaving_before_its_first_token_frees_it(
    small: Stack,
) -> None:
    async with httpx.AsyncClient(timeout=60) as http:
        running = asyncio.create_task(post(http, small, body()))
        await until(lambda: _running(small, 1))
        waiting = asyncio.create_task(post(http, small, body()))
        await until(lambda: _waiting(small, 1))
        started = time.monotonic()
        refused = await post(http, small, body())
        refused_at_once(refused, time.monotonic() - started)
        assert "waiting" in refused.json()["error"]["message"]

        await cancel(waiting)  # before its first token: it leaves the decoder's queue at once
        await until(lambda: _waiting(small, 0), timeout=1.0)
        await cancel(running)
        await until(lambda: _idle(small), timeout=1.0)
        info = await decoder_info(small)
        assert (info.running_requests, info.waiting_requests) == (0, 0)
        assert info.free_cache_tokens == info.total_cache_tokens


async def test_past_the_in_flight_bound_429_and_leaving_during_encoding_frees_the_place(
    small: Stack,
) -> None:
    """A stopped vision service holds image requests in their encoder call; clients that leave
    there free their places at once although the service never answered."""
    os.kill(small.vision.proc.pid, signal.SIGSTOP)
    try:
        async with httpx.AsyncClient(timeout=60) as http:
            held = [asyncio.create_task(post(http, small, body(image_seed=100 + i)))
                    for i in range(IN_FLIGHT)]  # fmt: skip
            await asyncio.sleep(1.5)  # the requests reach their encoder call
            assert not any(task.done() for task in held)
            started = time.monotonic()
            refused = await post(http, small, body(max_tokens=2))
            refused_at_once(refused, time.monotonic() - started)
            assert "in flight" in refused.json()["error"]["message"]

            await cancel(*held)
            await asyncio.sleep(0.5)
            served = await post(http, small, body(max_tokens=2))
            assert served.status_code == 200, served.text
            assert "[DONE]" in served.text
    finally:
        os.kill(small.vision.proc.pid, signal.SIGCONT)


async def _running(stack: Stack, n: int) -> bool:
    return (await decoder_info(stack)).running_requests == n


async def _waiting(stack: Stack, n: int) -> bool:
    return (await decoder_info(stack)).waiting_requests == n


async def _idle(stack: Stack) -> bool:
    info = await decoder_info(stack)
    busy = info.running_requests or info.waiting_requests
    return not busy and info.free_cache_tokens == info.total_cache_tokens
