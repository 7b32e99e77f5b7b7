"""What the vision and audio services share: one Encode call's pipeline and its thin servicer.

Both services answer the same two RPCs (``Encode``, ``Info``; autoglm.v1.VisionEncoder and
AudioEncoder differ only in name), so one servicer serves either. Model work is blocking, so it
runs on a single worker thread: the event loop stays free for health checks and new calls, and
the tower sees one batch at a time (torch already spreads one forward over the CPU cores).
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
from services.common.config import ServiceConfig
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
        return self.encode(inputs)


class EncoderServicer:
    """Encode and Info of either encoder: protobuf in, a MediaEncoder call, protobuf out."""

    def __init__(self, encoder: Slot[MediaEncoder[Any]], worker: concurrent.futures.Executor):
        self.encoder = encoder
        self.worker = worker

    async def Encode(
        self, request: encoder_pb2.EncodeRequest, context: grpc.aio.ServicerContext
    ) -> encoder_pb2.EncodeResponse:
        encoder = self.encoder.get()
        items = encode_request_from_pb(request)
        loop = asyncio.get_running_loop()
        # A call cancelled while queued never runs: the executor future is cancelled with it.
        embeddings = await loop.run_in_executor(self.worker, encoder, items)
        return embeddings_to_pb(embeddings)

    async def Info(
        self, request: encoder_pb2.EncoderInfoRequest, context: grpc.aio.ServicerContext
    ) -> encoder_pb2.EncoderInfo:
        return self.encoder.get().info.to_pb()


def run_encoder(
    config: ServiceConfig,
    *,
    service_name: str,
    add_servicer: Callable[[EncoderServicer, grpc.aio.Server], None],
    load: Callable[[], MediaEncoder[Any]],
) -> int:
    """Serve one encoder until SIGTERM; ``load`` builds its MediaEncoder after listening."""
    configure_logging(config.log_level)
    encoder: Slot[MediaEncoder[Any]] = Slot()
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="encode") as worker:
        servicer = EncoderServicer(encoder, worker)
        asyncio.run(
            serve(
                config,
                service_name=service_name,
                add_servicer=lambda server: add_servicer(servicer, server),
                load=lambda: encoder.set(load()),
            )
        )
    return 0
