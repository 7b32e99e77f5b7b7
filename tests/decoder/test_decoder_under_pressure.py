"""The decoder process with a KV cache far too small for its load: concurrent streams are
preempted and resumed, some are cancelled, and every one that stays gets exactly the tokens it
gets alone; afterwards nothing runs and all the cache is free."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from autoglm.v1 import decoder_pb2, decoder_pb2_grpc
from testkit.processes import ServiceProcess, spawn

pytestmark = pytest.mark.stack  # every test here talks to service processes

# 16 blocks of 16 tokens; each request needs 40 + 60 = 100 tokens (7 blocks) by its end
CACHE = ["--max-total-tokens", "256", "--kv-block-size", "16", "--max-model-len", "256"]
PROMPT, NEW = 40, 60


@pytest.fixture(scope="module")
def small_decoder(
    bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    logs = tmp_path_factory.mktemp("small-decoder-logs")
    process = spawn("decoder", bundle_dir, logs, args=["--quant", "none", *CACHE])
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


def request(i: int) -> decoder_pb2.GenerateRequest:
    prompt = [(7 * i + 3 * j) % 4000 + 10 for j in range(PROMPT)]
    stopping = decoder_pb2.StoppingParams(max_tokens=NEW, ignore_eos=True)
    return decoder_pb2.GenerateRequest(input_ids=prompt, stopping=stopping)


async def stream(stub: decoder_pb2_grpc.DecoderStub, i: int, cancel_after: int = 0) -> list[int]:
    call = stub.Generate(request(i))
    tokens: list[int] = []
    async for response in call:
        tokens += response.token_ids
        if cancel_after and len(tokens) == cancel_after:
            call.cancel()
            break
    return tokens


async def test_streams_outgrowing_the_cache_all_finish_right(small_decoder: ServiceProcess) -> None:
    async with grpc.aio.insecure_channel(small_decoder.target) as channel:
        stub = decoder_pb2_grpc.DecoderStub(channel)
        cancelled = {2: 5, 5: 20}  # request -> tokens received before cancelling
        together = await asyncio.gather(*(stream(stub, i, cancelled.get(i, 0)) for i in range(8)))
        alone = [await stream(stub, i) for i in range(8)]
        info = await stub.Info(decoder_pb2.DecoderInfoRequest())
    for i in range(8):
        if i in cancelled:
            assert together[i] == alone[i][: cancelled[i]]
        else:
            assert together[i] == alone[i] and len(alone[i]) == NEW, f"request {i}"
    assert info.preemptions > 0, "the cache never ran out: the test lost its point"
    assert (info.running_requests, info.waiting_requests) == (0, 0)
    assert info.free_cache_tokens == info.total_cache_tokens == 256
