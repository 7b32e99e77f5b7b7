"""The engine thread's delivery and failure modes, in process: a reader that fell behind gets
everything ready as one output, one that keeps up gets each as it comes; a model forward that
raises (vLLM's test_forward_error) fails every open stream at once and marks the engine dead; a
quiet stream gets heartbeats instead of silence."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import pytest
import torch

from services.common.errors import NotReady
from services.decoder.engine_thread import EngineThread, OutputBuffer
from services.decoder.model import Glm4ForCausalLM
from services.decoder.types import FinishReason, GenerateOutput, TokenLogprob
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


def output(token: int, finish: FinishReason | None = None) -> GenerateOutput:
    logprob = TokenLogprob(token, -0.5 * token)
    return GenerateOutput("r", (token,), (logprob,), finish, 7, token, 3)


async def test_outputs_that_queued_while_the_reader_was_away_come_as_one() -> None:
    buffer = OutputBuffer(asyncio.get_running_loop())
    for token in (1, 2, 3):
        buffer.put(output(token, FinishReason.LENGTH if token == 3 else None))
    joined = await buffer.take(None)
    assert joined is not None
    assert joined.token_ids == (1, 2, 3)
    assert [lp.token_id for lp in joined.logprobs] == [1, 2, 3]
    assert joined.finish_reason is FinishReason.LENGTH
    assert (joined.prompt_tokens, joined.completion_tokens, joined.cached_tokens) == (7, 3, 3)


async def test_a_reader_that_keeps_up_gets_each_output_as_it_comes() -> None:
    buffer = OutputBuffer(asyncio.get_running_loop())
    reading = asyncio.create_task(buffer.take(None))
    await asyncio.sleep(0)
    buffer.put(output(1))
    first = await asyncio.wait_for(reading, timeout=1)
    assert first is not None and first.token_ids == (1,)
    buffer.put(output(2))
    second = await buffer.take(None)
    assert second is not None and second.token_ids == (2,)


async def test_a_quiet_stream_gets_heartbeats_and_then_its_outputs() -> None:
    buffer = OutputBuffer(asyncio.get_running_loop())
    assert await buffer.take(0.05) is None
    assert await buffer.take(0.05) is None
    asyncio.get_running_loop().call_later(0.05, buffer.put, output(1))
    got = [await buffer.take(0.02) for _ in range(6)]
    tokens = [o.token_ids for o in got if o is not None]
    assert got[0] is None and tokens == [(1,)]


async def test_an_error_comes_after_the_outputs_delivered_before_it() -> None:
    buffer = OutputBuffer(asyncio.get_running_loop())
    buffer.put(output(1))
    buffer.fail(NotReady("gone"))
    first = await buffer.take(None)
    assert first is not None and first.token_ids == (1,)
    with pytest.raises(NotReady, match="gone"):
        await buffer.take(None)


async def test_leaving_a_stream_early_aborts_its_request(
    tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = Glm4ForCausalLM.from_pretrained(tiny_checkpoint, torch.float32, torch.device("cpu"))
    forward = model.forward

    def slow_forward(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.02)  # 200 tokens would take 4 s
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", slow_forward)
    engine = make_engine(model, max_running=1)
    thread = EngineThread(engine, asyncio.get_running_loop())
    thread.start()
    try:
        stream = thread.generate(request("left", 8, max_tokens=200), heartbeat_s=5.0)
        assert await anext(stream) is not None
        await stream.aclose()
        for _ in range(50):
            if not engine.has_work():
                break
            await asyncio.sleep(0.02)
        assert not engine.has_work()
    finally:
        await asyncio.to_thread(thread.stop)
