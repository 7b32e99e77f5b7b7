"""The decoder's gRPC transport: autoglm.v1.Decoder (Generate streams, Info) over the engine.

A stream that has produced nothing for ``heartbeat_s`` (queued, preempted, a long prefill) gets
a heartbeat message, so the gateway's idle deadline tells a quiet request from a stalled
service."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator
from typing import NoReturn

import grpc
import uvloop

from autoglm.v1 import decoder_pb2, decoder_pb2_grpc
from services.common.grpc_server import Slot, configure_logging, serve
from services.common.health import DECODER_SERVICE
from services.common.process_exit import exit_now
from services.decoder.config import DecoderConfig
from services.decoder.engine_thread import EngineThread
from services.decoder.loader import LoadedDecoder, load_decoder
from services.decoder.types import GenerateRequest

REQUEST_ID_METADATA = "x-request-id"
HEARTBEAT = decoder_pb2.GenerateResponse(heartbeat=True)


@dataclasses.dataclass(frozen=True)
class _Running:
    decoder: LoadedDecoder
    engine_thread: EngineThread


class DecoderServicer(decoder_pb2_grpc.DecoderServicer):
    def __init__(self, slot: Slot[_Running], heartbeat_s: float) -> None:
        self._slot = slot
        self._heartbeat_s = heartbeat_s

    async def Generate(
        self, request: decoder_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[decoder_pb2.GenerateResponse]:
        running = self._slot.get()
        generate = GenerateRequest.from_pb(request)
        if not generate.request_id:
            generate = dataclasses.replace(generate, request_id=_request_id(context))
        # a cancelled call raises CancelledError in here; leaving the stream aborts the request
        async for output in running.engine_thread.generate(generate, self._heartbeat_s):
            yield HEARTBEAT if output is None else output.to_pb()

    async def Info(
        self, request: decoder_pb2.DecoderInfoRequest, context: grpc.aio.ServicerContext
    ) -> decoder_pb2.DecoderInfo:
        running = self._slot.get()
        return running.decoder.info().to_pb()


def _request_id(context: grpc.aio.ServicerContext) -> str:
    """The gateway's request id from the call metadata, else a fresh one."""
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_METADATA and value:
            return f"{value}-{uuid.uuid4().hex[:8]}"  # unique even if a client reuses it
    return uuid.uuid4().hex


async def _serve(config: DecoderConfig) -> None:
    loop = asyncio.get_running_loop()
    slot: Slot[_Running] = Slot()
    broken = asyncio.Event()  # the engine thread died: health turns NOT_SERVING

    def load() -> None:
        decoder = load_decoder(config)
        engine_thread = EngineThread(
            decoder.engine, loop, on_failure=broken.set, step_timeout_s=config.step_timeout_s
        )
        engine_thread.start()
        slot.set(_Running(decoder, engine_thread))

    async def on_stop() -> None:
        try:
            running = slot.get()
        except Exception:  # stopped before the model finished loading
            return
        await asyncio.to_thread(running.engine_thread.stop)

    await serve(
        config,
        service_name=DECODER_SERVICE,
        add_servicer=lambda server: decoder_pb2_grpc.add_DecoderServicer_to_server(
            DecoderServicer(slot, config.heartbeat_s), server
        ),
        load=load,
        on_stop=on_stop,
        broken=broken,
    )


def run(config: DecoderConfig) -> NoReturn:
    configure_logging(config.log_level)
    # as the encoders (services/encoder/server.py): no wait for a load SIGTERM interrupted, no
    # interpreter teardown once serving stopped (an idle decoder took 6 s to exit). uvloop: each
    # streamed token wakes the loop twice (the engine thread's hand-off, gRPC's write done), and
    # every cycle the loop spends there is taken from the step's OpenMP threads
    uvloop.new_event_loop().run_until_complete(_serve(config))
    exit_now(0)
