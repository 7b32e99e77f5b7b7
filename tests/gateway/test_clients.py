"""The embedding cache (by content hash, bounded in bytes) and the request deadline."""

from __future__ import annotations

import time

import grpc
import pytest
import torch

from autoglm.v1 import vision_pb2_grpc
from gateway.clients import Deadline, EmbeddingCache, ServiceClients
from gateway.config import GatewayConfig
from gateway.media import Media
from services.encoder.types import Embedding, EncoderInfo, encode_response_to_pb


def rows(n: int) -> Embedding:
    return Embedding(torch.zeros(n, 8, dtype=torch.float16))  # 16 bytes per row


def test_cache_returns_what_was_put_by_kind_and_hash() -> None:
    cache = EmbeddingCache(max_bytes=1024)
    grid = Embedding(torch.zeros(4, 8, dtype=torch.float16), (1, 2, 2))
    cache.put(("image", "aa"), grid)
    assert cache.get(("image", "aa")) is grid and cache.hits == 1
    assert cache.get(("audio", "aa")) is None  # same bytes, other modality: another entry


def test_cache_drops_least_recently_used_first_to_stay_under_its_bound() -> None:
    cache = EmbeddingCache(max_bytes=64)  # room for two 2-row tensors
    cache.put(("image", "a"), rows(2))
    cache.put(("image", "b"), rows(2))
    cache.get(("image", "a"))  # a is now the most recently used
    cache.put(("image", "c"), rows(2))
    assert cache.get(("image", "b")) is None
    assert cache.get(("image", "a")) is not None and cache.get(("image", "c")) is not None
    assert cache.bytes <= 64


def test_items_larger_than_the_cache_and_a_zero_cache_keep_nothing() -> None:
    small = EmbeddingCache(max_bytes=16)
    small.put(("image", "big"), rows(4))
    assert len(small) == 0
    off = EmbeddingCache(max_bytes=0)
    off.put(("image", "x"), rows(1))
    assert len(off) == 0


def test_deadline_counts_down_and_expires() -> None:
    deadline = Deadline(0.05)
    assert 0 < deadline.remaining() <= 0.05
    time.sleep(0.06)
    with pytest.raises(TimeoutError):
        deadline.remaining()


class FlakyVision(vision_pb2_grpc.VisionEncoderServicer):
    """A real gRPC vision service whose first Encode finds it unavailable (a replica that went
    away), and which answers every later one."""

    def __init__(self) -> None:
        self.encodes = 0

    async def Info(self, request, context):  # type: ignore[no-untyped-def]
        return EncoderInfo("toy", "cpu", "float16", "none", hidden_size=2, max_items=4).to_pb()

    async def Encode(self, request, context):  # type: ignore[no-untyped-def]
        self.encodes += 1
        if self.encodes == 1:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "connection reset")
        return encode_response_to_pb([Embedding(torch.ones(3, 2)) for _ in request.items])


async def test_an_encode_that_finds_the_service_unavailable_is_tried_once_more() -> None:
    server = grpc.aio.server()
    vision = FlakyVision()
    vision_pb2_grpc.add_VisionEncoderServicer_to_server(vision, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    clients = ServiceClients(GatewayConfig(vision_target=f"127.0.0.1:{port}"))
    try:
        image = Media("image", b"png", "image/png", "ab" * 32)
        [embedding] = await clients.encode([image], "r1", Deadline(10))
        assert embedding.tensor.shape == (3, 2) and vision.encodes == 2
    finally:
        await clients.close()
        await server.stop(None)
