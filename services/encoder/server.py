"""`autoglm serve vision|audio`: the encoder servicer and the process that serves it.

The services answer the same two RPCs (``Encode``, ``Info``; autoglm.v1.VisionEncoder and
AudioEncoder differ only in name), so one servicer serves any of them; what differs is the
config's kind, which picks the gRPC service and the loader (``KINDS``). Model work is blocking,
so it runs on a single worker thread: the event loop stays free for health checks and new calls,
and the tower sees one batch at a time (torch already spreads one forward over the CPU cores);
concurrent calls share those batches (batcher.py).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
from collections.abc import Callable
from typing import Any, NoReturn

import grpc
from google.protobuf.descriptor import ServiceDescriptor

from autoglm.v1 import audio_pb2, audio_pb2_grpc, encoder_pb2, vision_pb2, vision_pb2_grpc
from services.audio.config import AudioConfig
from services.audio.model import load_encoder as load_audio
from services.common.grpc_server import Slot, configure_logging, serve
from services.common.process_exit import exit_now
from services.encoder.batcher import EncodeBatcher
from services.encoder.config import EncoderConfig
from services.encoder.pipeline import MediaEncoder
from services.encoder.types import encode_request_from_pb, encode_response_to_pb
from services.vision.config import VisionConfig
from services.vision.model import load_encoder as load_vision


class EncoderServicer:
    """Encode and Info of any encoder: protobuf in, a batched MediaEncoder call, protobuf out."""

    def __init__(self, batcher: Slot[EncodeBatcher[MediaEncoder[Any]]]):
        self.batcher = batcher

    async def Encode(
        self, request: encoder_pb2.EncodeRequest, context: grpc.aio.ServicerContext
    ) -> encoder_pb2.EncodeResponse:
        batcher = self.batcher.get()
        embeddings = await batcher(encode_request_from_pb(request))
        return encode_response_to_pb(embeddings)

    async def Info(
        self, request: encoder_pb2.EncoderInfoRequest, context: grpc.aio.ServicerContext
    ) -> encoder_pb2.EncoderInfo:
        return self.batcher.get().encoder.info.to_pb()


@dataclasses.dataclass(frozen=True)
class EncoderKind:
    """What one kind of encoder service is: its gRPC service and how its pipeline loads.

    ``service`` comes from the kind's ``*_pb2`` module: importing that registers the service
    with the default descriptor pool, which server reflection reads (``*_pb2_grpc`` does not)."""

    service: ServiceDescriptor
    add_servicer: Callable[[EncoderServicer, grpc.aio.Server], None]
    load: Callable[[Any], MediaEncoder[Any]]  # the kind's config -> its warmed-up pipeline


KINDS: dict[type[EncoderConfig], EncoderKind] = {
    VisionConfig: EncoderKind(
        vision_pb2.DESCRIPTOR.services_by_name["VisionEncoder"],
        vision_pb2_grpc.add_VisionEncoderServicer_to_server,
        load_vision,
    ),
    AudioConfig: EncoderKind(
        audio_pb2.DESCRIPTOR.services_by_name["AudioEncoder"],
        audio_pb2_grpc.add_AudioEncoderServicer_to_server,
        load_audio,
    ),
}


def run(config: EncoderConfig) -> NoReturn:
    """Serve the config's kind until SIGTERM; its pipeline loads after the port listens.
    Concurrent calls are batched together, ``batch_size`` inputs per tower call."""
    kind = KINDS[type(config)]
    configure_logging(config.log_level)
    batcher: Slot[EncodeBatcher[MediaEncoder[Any]]] = Slot()
    worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="encode")
    servicer = EncoderServicer(batcher)
    # Not asyncio.run: closing the loop would wait for every default-executor thread, a model
    # load that SIGTERM interrupted included (tens of seconds).
    asyncio.new_event_loop().run_until_complete(
        serve(
            config,
            service_name=kind.service.full_name,
            add_servicer=lambda server: kind.add_servicer(servicer, server),
            load=lambda: batcher.set(
                EncodeBatcher(
                    kind.load(config), worker, config.batch_size, config.max_waiting_calls
                )
            ),
        )
    )
    # Every call was answered or cancelled within the shutdown grace; a tower forward or a
    # load still running has nothing to save.
    worker.shutdown(wait=False, cancel_futures=True)
    logging.getLogger(__name__).info("%s stopped", kind.service.full_name)
    exit_now(0)
