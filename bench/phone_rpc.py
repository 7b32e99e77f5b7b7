"""The phone baseline's middle leg: one image request's work through the services, each called
directly over gRPC with the gateway's own clients (gateway/clients.py), the steps between
them run here as the gateway runs them. Set beside the in-process stages and the request
through the gateway (bench/phone_baseline.py), it says what each hop adds: the vision
service's Encode (its decoding, the tower, the patch states' bytes both ways), the decoder's
Generate (the embeddings' bytes, its engine thread, the stream back), and, as the rest of the
gateway's TTFT, HTTP, JSON, SSE and the gateway's own tasks and threads.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import time
from pathlib import Path
from typing import Any

from autoglm.v1 import decoder_pb2, encoder_pb2
from bench.phone_inprocess import InProcess, StageClock, Stages
from gateway.clients import Deadline, ServiceClients
from gateway.config import GatewayConfig
from gateway.media import Media, check_image, decode_base64
from services.decoder.types import GenerateRequest
from services.encoder.types import encode_response_from_pb, encode_response_to_pb

TIMEOUT_S = 600.0


class ServicesByRpc:
    """The gateway's gRPC clients to a running stack's vision service and decoder."""

    def __init__(self, targets: dict[str, str], token_file: Path, local: InProcess) -> None:
        config = GatewayConfig(
            vision_target=targets["vision"],
            audio_target=targets.get("audio", targets["vision"]),  # never called: images only
            decoder_target=targets["decoder"],
            internal_token_file=token_file,
        )
        self.clients = ServiceClients(config)
        self.config = config
        self.local = local  # its fusion stage, prompter and layout: the gateway's own parts
        self.calls = 0

    async def close(self) -> None:
        await self.clients.close()

    async def first_token(self, model: str, messages: list[Any], max_tokens: int) -> Stages:
        """One chat request with one image to its first token, hop by hop (wall seconds; the
        CPU column is this process's)."""
        body, payload = self.local.parse(model, messages, max_tokens)
        self.calls += 1
        request_id = f"phone-rpc-{self.calls}"
        deadline = Deadline(TIMEOUT_S)
        clock = StageClock()
        data = decode_base64(payload, self.config.max_image_bytes, "image_url")
        data, mime, header = check_image(data, self.config.max_image_pixels)
        media = Media("image", data, mime, hashlib.sha256(data).hexdigest(), header)
        clock.lap("load")  # the gateway's checks before any service is called
        (embedding,) = await self.clients.encode([media], request_id, deadline)
        clock.lap("vision_rpc")
        if embedding.grid_thw is None:
            raise ValueError("the vision service sent no grid: not a GLM-4.1V bundle")
        (tokens,), _ = self.local.fusion.fuse([embedding], [])
        clock.lap("fusion")
        request = self.local.generate_request(body, tokens, embedding.grid_thw)
        clock.lap("prompt")
        stream = self.clients.generate(request, request_id, deadline)
        async with contextlib.aclosing(stream):  # closing it cancels the call
            first = await anext(stream)
        clock.lap("decoder_rpc")
        return Stages(clock.wall, clock.cpu, first.prompt_tokens, first.cached_tokens)


def wire_costs(local: InProcess, model: str, messages: list[Any]) -> dict[str, float]:
    """What the two tensor hops cost in serialising alone, timed here on this request's real
    tensors (the sender's to_pb and bytes, the receiver's parse and from_pb): the vision
    service's patch states to the gateway, the fused tokens (in the GenerateRequest) to the
    decoder."""
    body, payload = local.parse(model, messages, 1)
    patched = local.encoder.decode(base64.b64decode(payload))
    (embedding,) = local.encoder.encode([patched])
    (tokens,), _ = local.fusion.fuse([embedding], [])
    request = local.generate_request(body, tokens, patched.grid_thw)
    started = time.perf_counter()
    sent = encode_response_to_pb([embedding]).SerializeToString()
    encode_response_from_pb(encoder_pb2.EncodeResponse.FromString(sent))
    states = time.perf_counter()
    request_bytes = request.to_pb().SerializeToString()
    GenerateRequest.from_pb(decoder_pb2.GenerateRequest.FromString(request_bytes))
    done = time.perf_counter()
    return {
        "patch_states_s": states - started, "patch_states_bytes": len(sent),
        "generate_request_s": done - states, "generate_request_bytes": len(request_bytes),
    }  # fmt: skip
