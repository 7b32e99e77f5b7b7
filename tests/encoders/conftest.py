"""The encoder service a test module runs: its ``KIND`` started with its ``ARGS`` (one
process per module), and a stub of its ``STUB`` class on it per test."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.encoders.helpers import Started, client_channel, start_encoder

IDLE_STOP_S = 3.0  # measured 0.45 s; slack for a loaded machine


@pytest.fixture(scope="module")
def started(
    request: pytest.FixtureRequest, bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Started]:
    # Reflection is off by default; the contract's reflection test needs it.
    kind, args = request.module.KIND, [*request.module.ARGS, "--enable-reflection"]
    service = start_encoder(kind, bundle_dir, tmp_path_factory.mktemp(f"{kind}-logs"), args)
    yield service
    stopping = time.monotonic()
    assert service.process.stop() == 0, service.process.log_tail()
    # an idle encoder stops at once on SIGTERM (interpreter teardown once took 3-16 s)
    assert time.monotonic() - stopping < IDLE_STOP_S


@pytest.fixture
async def stub(request: pytest.FixtureRequest, started: Started) -> AsyncIterator[Any]:
    async with client_channel(started.process.target) as channel:
        yield request.module.STUB(channel)
