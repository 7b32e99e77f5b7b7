"""Faults end cleanly, on real processes: a stopped (SIGSTOP) encoder fails its request with a
503 once the encode timeout passes; a stopped decoder ends every open stream with an error
event and [DONE] within the idle bound, while a request that is only quiet (queued behind
another) lives on its heartbeats; a killed decoder ends its streams at once, /health
turns 503, and the gateway serves again within seconds of the restart; a gateway told to stop
(SIGTERM) ends its open streams with an error event and [DONE]."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from testkit.media import data_url, image_bytes
from testkit.processes import spawn
from tests.conftest import Stack, start_stack, stop_stack

pytestmark = pytest.mark.stack  # every test here starts, stops or kills service processes

MODEL = "autoglm-phone-9b"
IDLE_S = 3.0  # the gateway's stream idle bound in these tests (30 s by default)
ENCODE_TIMEOUT_S = 3.0  # the gateway's encode timeout in these tests (120 s by default)
GATEWAY_ARGS = ["--stream-idle-timeout-s", str(IDLE_S), "--encode-timeout-s", str(ENCODE_TIMEOUT_S)]
DECODER_ARGS = ["--quant", "none", "--max-running-requests", "1", "--heartbeat-s", "0.5"]


@pytest.fixture(scope="module")
def faulty(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    started = start_stack(
        bundle_dir,
        tmp_path_factory.mktemp("fault-logs"),
        decoder_args=DECODER_ARGS,
        gateway_args=GATEWAY_ARGS,
    )
    try:
        yield started
    finally:
        stop_stack(started)


def body(max_tokens: int = 4000) -> dict[str, Any]:
    return {
        "model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True,
        "max_tokens": max_tokens, "ignore_eos": True,
    }  # fmt: skip


class Stream:
    """One streamed request: its events as they come, when the first and the last arrived."""

    def __init__(self, base_url: str) -> None:
        self.events: list[str] = []
        self.status = 0
        self.first = asyncio.Event()
        self.ended_at = 0.0
        self.task = asyncio.create_task(self._run(base_url))

    async def _run(self, base_url: str) -> None:
        async with httpx.AsyncClient(timeout=120) as http:
            url = f"{base_url}/chat/completions"
            async with http.stream("POST", url, json=body()) as reply:
                self.status = reply.status_code
                async for line in reply.aiter_lines():
                    if line:
                        self.events.append(line)
                        self.first.set()
        self.ended_at = time.monotonic()

    async def ended_with_an_error(self, within: float, *words: str) -> float:
        """Streaming had begun: an error event, then [DONE]. It had not (no token yet): the
        error is the response itself, with its HTTP status."""
        started = time.monotonic()
        await asyncio.wait_for(self.task, timeout=within)
        if self.status == 200:
            assert self.events[-1] == "data: [DONE]"
            assert self.events[-2].startswith('data: {"error"'), self.events[-3:]
        else:
            assert self.status == 503 and self.events[-1].startswith('{"error"'), self.events
        assert all(word in self.events[-2 if self.status == 200 else -1] for word in words)
        return self.ended_at - started


async def test_a_stopped_decoder_ends_every_open_stream_within_the_idle_bound(
    faulty: Stack,
) -> None:
    streams = [Stream(faulty.base_url)]
    await asyncio.wait_for(streams[0].first.wait(), timeout=60)  # decoding: the only row
    streams.append(Stream(faulty.base_url))  # queued behind it
    await asyncio.sleep(IDLE_S + 1)  # the queued one is quiet longer than the bound: alive
    assert not streams[1].task.done()
    os.kill(faulty.decoder.proc.pid, signal.SIGSTOP)
    try:
        for stream in streams:
            took = await stream.ended_with_an_error(IDLE_S + 5, "decoder sent nothing")
            assert took <= IDLE_S + 2
        assert [s.status for s in streams] == [200, 503]  # streaming, and not yet begun
    finally:
        os.kill(faulty.decoder.proc.pid, signal.SIGCONT)


async def test_a_stopped_encoder_fails_its_request_with_503_within_the_encode_timeout(
    faulty: Stack,
) -> None:
    image = {"type": "image_url", "image_url": {"url": data_url(image_bytes(), "image/png")}}
    message = {"role": "user", "content": [image, {"type": "text", "text": "what is it?"}]}
    request = {"model": MODEL, "messages": [message], "max_tokens": 4}
    os.kill(faulty.vision.proc.pid, signal.SIGSTOP)  # stalled: the port open, no answer
    try:
        started = time.monotonic()
        async with httpx.AsyncClient(timeout=60) as http:
            reply = await http.post(f"{faulty.base_url}/chat/completions", json=request)
        took = time.monotonic() - started
    finally:
        os.kill(faulty.vision.proc.pid, signal.SIGCONT)
    assert reply.status_code == 503 and reply.headers["retry-after"]
    assert reply.json()["error"]["message"] == (
        f"the vision encoder did not answer within {ENCODE_TIMEOUT_S:g} s"
    )
    assert ENCODE_TIMEOUT_S <= took < ENCODE_TIMEOUT_S + 3  # not keepalive's ~15 s, nor a retry
    async with httpx.AsyncClient(timeout=60) as http:  # and once it runs again, it answers
        reply = await http.post(f"{faulty.base_url}/chat/completions", json=request)
    assert reply.status_code == 200, reply.text


async def test_a_quiet_request_outlives_the_idle_bound_on_heartbeats(faulty: Stack) -> None:
    first = Stream(faulty.base_url)
    await asyncio.wait_for(first.first.wait(), timeout=60)
    queued = Stream(faulty.base_url)
    await asyncio.sleep(IDLE_S * 2)  # queued behind `first`: no token for twice the bound
    assert not queued.task.done() and not queued.events
    first.task.cancel()  # its row frees, the queued one starts
    await asyncio.wait_for(queued.first.wait(), timeout=30)
    assert '"error"' not in queued.events[0]
    queued.task.cancel()


async def test_a_killed_decoder_ends_streams_at_once_and_the_gateway_recovers_on_restart(
    faulty: Stack, tmp_path: Path, bundle_dir: Path
) -> None:
    stream = Stream(faulty.base_url)
    await asyncio.wait_for(stream.first.wait(), timeout=60)
    faulty.decoder.proc.kill()
    assert await stream.ended_with_an_error(5) < 2
    async with httpx.AsyncClient(timeout=10) as http:
        assert (await http.get(f"{faulty.gateway.url}/health")).status_code == 503
        restarted = spawn("decoder", bundle_dir, tmp_path, DECODER_ARGS, port=faulty.decoder.port)
        faulty.decoder = restarted  # stopped with the stack
        await asyncio.to_thread(restarted.wait_ready)
        ready = time.monotonic()
        while (await http.get(f"{faulty.gateway.url}/health")).status_code != 200:
            assert time.monotonic() - ready < 10, "the gateway did not see the decoder return"
            await asyncio.sleep(0.25)
        reply = await http.post(f"{faulty.base_url}/chat/completions", json=body(4))
        assert reply.status_code == 200 and reply.text.rstrip().endswith("data: [DONE]")


async def test_a_gateway_told_to_stop_ends_its_open_streams_with_an_error_event(
    faulty: Stack, bundle_dir: Path, tmp_path: Path
) -> None:
    gateway = spawn(
        "gateway",
        bundle_dir,
        tmp_path,
        args=[
            "--vision-target", faulty.vision.target, "--audio-target", faulty.audio.target,
            "--decoder-target", faulty.decoder.target,
        ],
    )  # fmt: skip
    try:
        await asyncio.to_thread(gateway.wait_ready)
        stream = Stream(f"{gateway.url}/v1")
        await asyncio.wait_for(stream.first.wait(), timeout=60)
        gateway.proc.send_signal(signal.SIGTERM)
        assert await stream.ended_with_an_error(5, "shutting down") < 3
        # uvicorn exits by the signal it was sent, once its shutdown is complete
        assert await asyncio.to_thread(gateway.proc.wait, 15) in (0, -signal.SIGTERM)
    finally:
        gateway.stop()
