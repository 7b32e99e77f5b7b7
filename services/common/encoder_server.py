"""What the vision and audio services share: one Encode call's pipeline and its thin servicer.

Both services answer the same two RPCs (``Encode``, ``Info``; autoglm.v1.VisionEncoder and
AudioEncoder differ only in name), so one servicer serves either. Model work is blocking, so it
runs on a single worker thread: the event loop stays free for health checks and new calls, and
the tower sees one batch at a time (torch already spreads one forward over the CPU cores);
concurrent calls share those batches (encode_batcher.py).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import grpc
import torch

from autoglm.v1 import encoder_pb2
from services.common.encode_batcher import EncodeBatcher
from services.common.encoder_config import EncoderConfig
from services.common.encoder_types import (
    EncoderInfo,
    MediaItem,
    embeddings_to_pb,
    encode_request_from_pb,
)
from services.common.errors import InvalidInput, TooLarge
from services.common.grpc_server import Slot, configure_logging, serve

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class MediaEncoder(Generic[T]):
    """Decode every item of a request (bytes -> model input), then encode them in batches."""

    decode: Callable[[bytes], T]
    encode: Callable[[list[T]], list[torch.Tensor]]
    info: EncoderInfo

    def __call__(self, items: list[MediaItem]) -> list[torch.Tensor]:
        return self.encode(self.decode_all(items))

    def decode_all(self, items: list[MediaItem]) -> list[T]:
        """Check the request's limits and decode every item, naming the one that fails."""
        if not items:
            raise InvalidInput("the request has no items")
        if len(items) > self.info.max_items:
            raise TooLarge(
                f"{len(items)} items exceed the limit of {self.info.max_items} per request"
            )
        inputs: list[T] = []
        for index, item in enumerate(items):
            try:
                inputs.append(self.decode(item.data))
            except InvalidInput as exc:  # TooLarge included: the same kind, with the item named
                raise type(exc)(f"item {index}: {exc}") from None
        return inputs


class EncoderServicer:
    """Encode and Info of either encoder: protobuf in, a batched MediaEncoder call, protobuf
    out."""

    def __init__(self, batcher: Slot[EncodeBatcher]):
        self.batcher = batcher

    async def Encode(
        self, request: encoder_pb2.EncodeRequest, context: grpc.aio.ServicerContext
    ) -> encoder_pb2.EncodeResponse:
        batcher = self.batcher.get()
        embeddings = await batcher(encode_request_from_pb(request))
        return embeddings_to_pb(embeddings)

    async def Info(
        self, request: encoder_pb2.EncoderInfoRequest, context: grpc.aio.ServicerContext
    ) -> encoder_pb2.EncoderInfo:
        return self.batcher.get().encoder.info.to_pb()


def run_encoder(
    config: EncoderConfig,
    *,
    service_name: str,
    add_servicer: Callable[[EncoderServicer, grpc.aio.Server], None],
    load: Callable[[], MediaEncoder[Any]],
) -> int:
    """Serve one encoder until SIGTERM; ``load`` builds its MediaEncoder after listening.
    Concurrent calls are batched together, ``batch_size`` inputs per tower call."""
    configure_logging(config.log_level)
    batcher: Slot[EncodeBatcher] = Slot()
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="encode") as worker:
        servicer = EncoderServicer(batcher)
        asyncio.run(
            serve(
                config,
                service_name=service_name,
                add_servicer=lambda server: add_servicer(servicer, server),
                load=lambda: batcher.set(EncodeBatcher(load(), worker, config.batch_size)),
            )
        )
    return 0
