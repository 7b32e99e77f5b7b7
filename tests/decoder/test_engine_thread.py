"""The engine thread's failure modes, in process: a model forward that raises (vLLM's
test_forward_error) fails every open stream at once and marks the engine dead; a quiet stream
gets heartbeats instead of silence."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import pytest
import torch

from services.common.errors import NotReady
from services.decoder.engine_thread import EngineThread
from services.decoder.model import Glm4ForCausalLM
from services.decoder.server import with_heartbeats
from tests.decoder.engines import make_engine, request


async def drain(stream: AsyncGenerator[Any]) -> int:
    count = 0
    async for _ in stream:
        count += 1
    return count


async def test_a_failing_forward_fails_every_open_stream_and_the_engine_serves_no_more(
    tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = Glm4ForCausalLM.from_pretrained(tiny_checkpoint, torch.float32, torch.device("cpu"))
    failing = threading.Event()
    forward = model.forward

    def forward_until_it_fails(*args: Any, **kwargs: Any) -> Any:
        if failing.is_set():
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", forward_until_it_fails)
    failures: list[str] = []
    thread = EngineThread(
        make_engine(model, max_running=1), asyncio.get_running_loop(), lambda: failures.append("x")
    )
    thread.start()
    try:
        running = thread.generate(request("running", 8, max_tokens=200))
        await anext(running)  # decoding
        waiting = asyncio.create_task(drain(thread.generate(request("waiting", 8))))
        rest = asyncio.create_task(drain(running))
        await asyncio.sleep(0.05)
        failing.set()
        for stream in (rest, waiting):
            with pytest.raises(NotReady, match="engine failed"):
                await asyncio.wait_for(stream, timeout=5)
        assert failures == ["x"] and thread.failed
        with pytest.raises(NotReady, match="engine failed"):
            await anext(thread.generate(request("later", 8)))
    finally:
        await asyncio.to_thread(thread.stop)


async def test_a_quiet_stream_gets_heartbeats_and_then_its_items() -> None:
    async def slow() -> AsyncGenerator[int]:
        await asyncio.sleep(0.35)
        yield 1
        yield 2

    got = [item async for item in with_heartbeats(slow(), every_s=0.1)]
    assert got[:3] == [None, None, None] and got[-2:] == [1, 2]
    assert set(got[:-2]) == {None}


async def test_leaving_a_heartbeat_stream_closes_what_it_reads() -> None:
    closed = asyncio.Event()

    async def endless() -> AsyncGenerator[int]:
        try:
            while True:
                await asyncio.sleep(10)
                yield 0
        finally:
            closed.set()

    stream = with_heartbeats(endless(), every_s=0.05)
    assert await anext(stream) is None
    await stream.aclose()
    assert closed.is_set()  # the engine would abort the request here
