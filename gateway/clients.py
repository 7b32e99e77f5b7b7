"""gRPC clients of the three services, as the gateway uses them.

Channels carry the message limits from config and gRPC's ``round_robin`` policy, so a
``dns:///vision:50051`` target spreads calls over every replica the name resolves to. Every
call carries the request id (``x-request-id`` metadata) and the request's one deadline. The two
encoders are called concurrently in one task group; their outputs are cached by content hash
(an LRU bounded in bytes), so an agent that resends its old screenshots does not re-encode them.

Faults end cleanly: an Encode (idempotent) is tried once more on UNAVAILABLE (a replica that
went away); an encoder call unanswered for ``encode_timeout_s`` (a stalled encoder, which
keepalive alone would notice only later) ends with ``NotReady``; a decoder stream silent for
``stream_idle_timeout_s`` (the decoder heartbeats every few seconds while a request is quiet)
is a stalled service and ends with ``NotReady``; ``end_streams()`` (the gateway shutting
down) ends every open decoder stream the same way.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator, Sequence
from typing import TypeVar

import anyio
import grpc

from autoglm.v1 import (
    audio_pb2_grpc,
    decoder_pb2,
    decoder_pb2_grpc,
    encoder_pb2,
    vision_pb2_grpc,
)
from gateway.config import GatewayConfig
from gateway.idle_watch import IdleWatch
from gateway.media import Media
from services.common.auth import internal_channel
from services.common.errors import NotReady
from services.common.grpc_server import channel_options
from services.common.health import AUDIO_SERVICE, DECODER_SERVICE, VISION_SERVICE, is_serving
from services.decoder.types import DecoderInfo, GenerateOutput, GenerateRequest
from services.encoder.types import (
    Embedding,
    EncoderInfo,
    encode_request_to_pb,
    encode_response_from_pb,
)

T = TypeVar("T")
SHUTTING_DOWN = "the server is shutting down; retry the request"
ROUND_ROBIN = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})


class Deadline:
    """One request's deadline, shared by every call made for it."""

    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds

    def remaining(self) -> float:
        left = self.at - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request's deadline passed")
        return left


class EmbeddingCache:
    """Encoder outputs by (kind, sha256), least recently used first out, bounded in bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: collections.OrderedDict[tuple[str, str], Embedding] = collections.OrderedDict()
        self.hits = 0

    def get(self, key: tuple[str, str]) -> Embedding | None:
        found = self._items.get(key)
        if found is not None:
            self._items.move_to_end(key)
            self.hits += 1
        return found

    def put(self, key: tuple[str, str], embedding: Embedding) -> None:
        size = _nbytes(embedding)
        if size > self.max_bytes or key in self._items:
            return
        self._items[key] = embedding
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, dropped = self._items.popitem(last=False)
            self.bytes -= _nbytes(dropped)

    def __len__(self) -> int:
        return len(self._items)


class ServiceClients:
    def __init__(self, config: GatewayConfig) -> None:
        options = [*channel_options(config), ("grpc.service_config", ROUND_ROBIN)]
        # Each channel sends the internal token and speaks TLS as configured.
        self.channels = {
            VISION_SERVICE: internal_channel(config.vision_target, config, options),
            AUDIO_SERVICE: internal_channel(config.audio_target, config, options),
            DECODER_SERVICE: internal_channel(config.decoder_target, config, options),
        }
        self.vision = vision_pb2_grpc.VisionEncoderStub(self.channels[VISION_SERVICE])
        self.audio = audio_pb2_grpc.AudioEncoderStub(self.channels[AUDIO_SERVICE])
        self.decoder = decoder_pb2_grpc.DecoderStub(self.channels[DECODER_SERVICE])
        self.cache = EmbeddingCache(config.embedding_cache_bytes)
        self._max_items: dict[str, int] = {}
        self._idle_s = config.stream_idle_timeout_s
        self._encode_timeout_s = config.encode_timeout_s
        self._streams: set[grpc.aio.UnaryStreamCall] = set()  # open decoder calls
        self._ending = False

    def end_streams(self) -> None:
        """Shutting down: every open decoder stream (and any opened later) ends at once with
        NotReady, so its client gets an error event and [DONE] instead of a cut connection."""
        self._ending = True
        for call in self._streams:
            call.cancel()

    async def close(self) -> None:
        for channel in self.channels.values():
            await channel.close()

    async def health(self, names: Sequence[str]) -> dict[str, bool]:
        """The named health status of each of these services (the overall one is SERVING from
        the start)."""
        status: dict[str, bool] = {}

        async def check(name: str) -> None:
            status[name] = await is_serving(self.channels[name], name)

        async with anyio.create_task_group() as group:
            for name in names:
                group.start_soon(check, name)
        return status

    async def decoder_info(self, request_id: str, timeout: float = 5.0) -> DecoderInfo:
        reply = await self.decoder.Info(
            decoder_pb2.DecoderInfoRequest(), timeout=timeout, metadata=_metadata(request_id)
        )
        return DecoderInfo.from_pb(reply)

    async def decoder_state(self, timeout: float = 2.0) -> DecoderInfo | None:
        """The decoder's Info for monitoring, or None if it does not answer in time: a
        metrics scrape reports the decoder down rather than failing."""
        try:
            return await self.decoder_info("metrics", timeout)
        except grpc.aio.AioRpcError:
            return None

    async def encode(
        self, media: Sequence[Media], request_id: str, deadline: Deadline
    ) -> list[Embedding]:
        """One embedding [rows, d_enc] (+ grid) per item, in order; cached items are not
        re-sent."""
        results: list[Embedding | None] = [self.cache.get((m.kind, m.sha256)) for m in media]
        missing = [i for i, found in enumerate(results) if found is None]

        async def run(kind: str, indices: list[int]) -> None:
            embeddings = await self._encode_kind(
                kind, [media[i] for i in indices], request_id, deadline
            )
            for i, embedding in zip(indices, embeddings, strict=True):
                results[i] = embedding
                self.cache.put((kind, media[i].sha256), embedding)

        with anyio.fail_after(deadline.remaining()):
            async with anyio.create_task_group() as group:
                for kind in ("image", "audio"):
                    indices = [i for i in missing if media[i].kind == kind]
                    if indices:
                        group.start_soon(run, kind, indices)
        return [r for r in results if r is not None]

    async def _encode_kind(
        self, kind: str, items: list[Media], request_id: str, deadline: Deadline
    ) -> list[Embedding]:
        """Batches of at most the encoder's max_items, sent concurrently."""
        stub = self.vision if kind == "image" else self.audio
        name = VISION_SERVICE if kind == "image" else AUDIO_SERVICE
        encoder = "vision" if kind == "image" else "audio"
        if name not in self._max_items:
            with self._encoder_timeout(encoder, deadline) as timeout:
                info = await stub.Info(
                    encoder_pb2.EncoderInfoRequest(),
                    timeout=timeout,
                    metadata=_metadata(request_id),
                )
            self._max_items[name] = max(EncoderInfo.from_pb(info).max_items, 1)
        size = self._max_items[name]
        batches = [items[i : i + size] for i in range(0, len(items), size)]
        outputs: list[list[Embedding]] = [[] for _ in batches]

        async def run(index: int) -> None:
            batch = batches[index]
            pb = encode_request_to_pb([m.to_item() for m in batch])

            async def encode() -> encoder_pb2.EncodeResponse:
                with self._encoder_timeout(encoder, deadline) as timeout:
                    return await stub.Encode(pb, timeout=timeout, metadata=_metadata(request_id))

            reply = await _once_more_if_unavailable(encode)
            outputs[index] = encode_response_from_pb(reply)
            if len(outputs[index]) != len(batch):
                raise RuntimeError(
                    f"{name} returned {len(outputs[index])} embeddings for {len(batch)}"
                )

        async with anyio.create_task_group() as group:
            for index in range(len(batches)):
                group.start_soon(run, index)
        return [embedding for batch_out in outputs for embedding in batch_out]

    @contextlib.contextmanager
    def _encoder_timeout(self, encoder: str, deadline: Deadline) -> Iterator[float]:
        """The timeout of one encoder call: ``encode_timeout_s``, or what is left of the
        request's deadline if that comes first. Past the encode timeout the encoder is
        stalled (stopped, wedged): NotReady, a 503 the client may retry."""
        left = deadline.remaining()
        try:
            yield min(left, self._encode_timeout_s)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED or left <= self._encode_timeout_s:
                raise
            raise NotReady(
                f"the {encoder} encoder did not answer within {self._encode_timeout_s:g} s"
            ) from None

    async def generate(
        self, request: GenerateRequest, request_id: str, deadline: Deadline
    ) -> AsyncGenerator[GenerateOutput]:
        """The decoder's stream. Closing this generator early (client gone, stop string
        matched) cancels the call, and the decoder frees the request's KV cache. Heartbeats are
        not passed on; a silence longer than the idle timeout ends the stream."""
        if self._ending:
            raise NotReady(SHUTTING_DOWN)
        call = self.decoder.Generate(
            request.to_pb(), timeout=deadline.remaining(), metadata=_metadata(request_id)
        )
        self._streams.add(call)
        idle = IdleWatch(call, self._idle_s)
        try:
            while True:
                reply = await call.read()
                idle.heard()
                if reply is grpc.aio.EOF:
                    return
                if not reply.heartbeat:
                    yield GenerateOutput.from_pb(reply, request.request_id)
        except asyncio.CancelledError:
            if idle.expired:
                raise NotReady(
                    f"the decoder sent nothing for {self._idle_s:g} s (not even its heartbeat); "
                    "the stream was ended"
                ) from None
            # end_streams() cancelled the call, not our caller: say why the stream ended
            task = asyncio.current_task()
            if self._ending and task is not None and not task.cancelling():
                raise NotReady(SHUTTING_DOWN) from None
            raise
        finally:
            idle.stop()
            self._streams.discard(call)
            call.cancel()


async def _once_more_if_unavailable(call: Callable[[], Awaitable[T]]) -> T:
    """An idempotent call, tried again once when the service was unavailable (a replica that
    went away, a connection reset): round_robin then picks a live address."""
    try:
        return await call()
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.UNAVAILABLE:
            raise
    return await call()


def _nbytes(embedding: Embedding) -> int:
    return embedding.tensor.numel() * embedding.tensor.element_size()


def _metadata(request_id: str) -> tuple[tuple[str, str], ...]:
    return (("x-request-id", request_id),)
