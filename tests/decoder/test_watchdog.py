"""The engine-thread watchdog, in process: a step that never returns (a model forward blocked on
an event no one sets) fails every open stream and the engine, like a step that raises; many
quick steps in a row never trip it."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from services.common.errors import NotReady
from services.decoder.engine_thread import EngineThread
from services.decoder.model import Glm4ForCausalLM
from services.decoder.watchdog import StepWatchdog
from tests.decoder.engines import make_engine, request
from tests.decoder.test_engine_thread import drain

STEP_TIMEOUT_S = 1.0


async def test_a_step_that_never_returns_fails_every_open_stream_and_the_engine(
    tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = Glm4ForCausalLM.from_pretrained(tiny_checkpoint, torch.float32, torch.device("cpu"))
    hang, release = threading.Event(), threading.Event()
    forward = model.forward

    def forward_that_may_hang(*args: Any, **kwargs: Any) -> Any:
        if hang.is_set():
            release.wait(60)  # the step never returns while the test runs
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", forward_that_may_hang)
    failures: list[float] = []
    loop = asyncio.get_running_loop()
    engine_thread = EngineThread(
        make_engine(model, max_running=1),
        loop,
        lambda: failures.append(loop.time()),
        step_timeout_s=STEP_TIMEOUT_S,
    )
    engine_thread.start()
    try:
        running = engine_thread.generate(request("running", 8, max_tokens=200))
        await anext(running)  # decoding, well under the step timeout per step
        waiting = asyncio.create_task(drain(engine_thread.generate(request("waiting", 8))))
        rest = asyncio.create_task(drain(running))
        await asyncio.sleep(0.05)
        hung_at = loop.time()
        hang.set()
        for stream in (rest, waiting):
            with pytest.raises(NotReady, match="engine failed"):
                await asyncio.wait_for(stream, timeout=10 * STEP_TIMEOUT_S)
        assert engine_thread.failed and len(failures) == 1
        # failed once the step had run for the timeout, not before (one poll of slack)
        assert STEP_TIMEOUT_S <= failures[0] - hung_at < 3 * STEP_TIMEOUT_S
        with pytest.raises(NotReady, match="engine failed"):
            await anext(engine_thread.generate(request("later", 8)))
        # stopping does not wait for the stuck thread
        started = time.monotonic()
        await asyncio.to_thread(engine_thread.stop)
        assert time.monotonic() - started < 1.0
    finally:
        release.set()
        await asyncio.to_thread(engine_thread.stop)


def test_only_a_single_step_is_timed() -> None:
    hung: list[float] = []
    watchdog = StepWatchdog(0.3, hung.append, poll_s=0.02)
    watchdog.start()
    try:
        deadline = time.monotonic() + 1.0  # quick steps, back to back, for 3x the timeout
        while time.monotonic() < deadline:
            with watchdog.step():
                time.sleep(0.05)
        assert hung == []
        with watchdog.step():
            time.sleep(0.6)
        assert len(hung) == 1 and 0.3 < hung[0] < 0.6
    finally:
        watchdog.stop()
