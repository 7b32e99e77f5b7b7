"""The phone mix's in-process baseline: one image request's work without the services between.

The same parts the stack runs, loaded in the benchmark's own process with the settings
`autoglm up` gives them (an imported bundle: the decoder unquantized, the tower in LLM.int8(),
the projector in the gateway's fusion dtype), called directly on the same screenshot and
messages: the image processor (base64 and PNG decoding, resize, patching), the vision tower,
the fusion stage (gateway/fusion.py), the chat template with the image's placeholder span and
its 3-D positions, then the decoder engine stepped until the first token. Each stage is timed
in wall and CPU time (this process's, every thread: torch's included). What the services add
on top is bench/phone_baseline.py's comparison (issue 12: at most 1.25x).
"""

from __future__ import annotations

import base64
import dataclasses
import time
from pathlib import Path
from typing import Any

import torch

from bundle.layout import Bundle
from gateway.chat import ChatPrompter
from gateway.config import GatewayConfig
from gateway.fusion import FusionStage
from gateway.positions import image_layout
from gateway.protocol.chat_completions import ChatCompletionRequest
from gateway.protocol.messages import ImagePart
from services.decoder.config import DecoderConfig
from services.decoder.engine import Engine
from services.decoder.loader import load_decoder
from services.decoder.types import GenerateRequest, MultimodalSegment
from services.vision.config import VisionConfig
from services.vision.glm4v import load_glm4v_encoder


class StageClock:
    """Wall and CPU seconds (this process's) per named stage, each lap from the last."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self._mark = time.perf_counter(), time.process_time()

    def lap(self, stage: str) -> None:
        now = time.perf_counter(), time.process_time()
        self.wall[stage] = now[0] - self._mark[0]
        self.cpu[stage] = now[1] - self._mark[1]
        self._mark = now


@dataclasses.dataclass(frozen=True)
class Stages:
    """Where one request's time went, seconds per stage in order, and its prompt's tokens."""

    wall: dict[str, float]
    cpu: dict[str, float]
    prompt_tokens: int
    cached_tokens: int

    @property
    def ttft_s(self) -> float:
        return sum(self.wall.values())

    @property
    def cpu_s(self) -> float:
        return sum(self.cpu.values())

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "ttft_s": self.ttft_s, "cpu_s": self.cpu_s}


class InProcess:
    """The stack's parts in this process, on ``bundle`` (a GLM-4.1V one), with the settings
    the stack was started with: the image processor's ``max_pixels`` (0: the checkpoint's) and
    the decoder's KV cache size."""

    def __init__(self, bundle: Path, device: str, max_pixels: int, max_total_tokens: int) -> None:
        self.bundle = Bundle.load(bundle)
        gateway = GatewayConfig(bundle=bundle, device=device, vision_max_pixels=max_pixels)
        vision = VisionConfig(bundle=bundle, device=device, max_pixels=max_pixels)
        # `autoglm up` serves an imported bundle unquantized until `autoglm quantize` has run
        decoder = DecoderConfig(
            bundle=bundle, device=device, quantization="none", max_total_tokens=max_total_tokens
        )
        self.default_max_tokens = gateway.default_max_tokens
        self.prompter = ChatPrompter.from_pretrained(self.bundle.decoder, self.bundle.modalities)
        layout = image_layout(self.bundle, gateway)
        if layout is None:
            raise ValueError(f"{bundle}: the in-process baseline takes a GLM-4.1V bundle")
        self.layout = layout
        self.encoder = load_glm4v_encoder(self.bundle.vision, vision)
        self.fusion = FusionStage.for_bundle(
            self.bundle, torch.device(device), gateway.fusion_dtype
        )
        self.engine: Engine = load_decoder(decoder).engine
        self.requests = 0

    @staticmethod
    def parse(
        model: str, messages: list[Any], max_tokens: int
    ) -> tuple[ChatCompletionRequest, str]:
        """The request as the gateway validates it, and its one image's base64 payload."""
        body = ChatCompletionRequest.model_validate(
            {"model": model, "messages": messages, "max_tokens": max_tokens}
        )
        (part,) = body.media_parts()
        if not isinstance(part, ImagePart):
            raise ValueError("the phone baseline takes one image")
        return body, part.image_url.url.partition(",")[2]

    def generate_request(
        self, body: ChatCompletionRequest, tokens: torch.Tensor, grid: tuple[int, int, int]
    ) -> GenerateRequest:
        """The chat template around the image's ``tokens`` (fused), its 3-D positions, and
        the decoder request the gateway would send."""
        prompt = self.prompter.render(
            body.messages, [("image", int(tokens.shape[0]))], enable_thinking=body.thinking
        )
        (placeholder,) = prompt.placeholders
        self.requests += 1
        return GenerateRequest(
            request_id=f"phone-baseline-{self.requests}",
            input_ids=tuple(prompt.input_ids),
            sampling=body.to_sampling_params(0),
            stopping=body.to_stopping_params(self.default_max_tokens),
            segments=(MultimodalSegment(placeholder.offset, tokens),),
            positions=self.layout.positions(prompt, [grid]),
        )

    def first_token(self, model: str, messages: list[Any], max_tokens: int) -> Stages:
        """One chat request with one image, timed stage by stage to its first token; the rest
        of its completion is dropped (the engine frees it)."""
        body, payload = self.parse(model, messages, max_tokens)
        clock = StageClock()
        patched = self.encoder.decode(base64.b64decode(payload))
        clock.lap("preprocess")  # base64 + PNG decode, resize, patching
        (states,) = self.encoder.encode([patched])
        clock.lap("tower")
        (tokens,), _ = self.fusion.fuse([states], [])
        clock.lap("fusion")
        request = self.generate_request(body, tokens, patched.grid_thw)
        clock.lap("prompt")  # chat template, tokenizing, 3-D positions
        self.engine.add(request)
        while not (outputs := self.engine.step()):
            pass
        clock.lap("prefill")  # engine steps until the first token
        self.engine.abort(request.request_id)
        while self.engine.has_work():
            self.engine.step()
        return Stages(clock.wall, clock.cpu, outputs[0].prompt_tokens, outputs[0].cached_tokens)
