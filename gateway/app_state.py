"""``Gateway``: what the routes share (the bundle, the pipeline, the formatter, the service
clients), built once at start-up on the server's loop and kept as ``app.state.gateway``."""

from __future__ import annotations

import asyncio
import importlib.metadata
import time
import uuid

import grpc
import httpx

from bundle.layout import Bundle
from gateway.chat import ChatPrompter
from gateway.clients import ServiceClients
from gateway.config import GatewayConfig
from gateway.errors import ModelNotFound
from gateway.formatting import Formatter
from gateway.fusion import FusionStage
from gateway.media import MediaLoader
from gateway.media_tokens import MediaTokenCounter
from gateway.pipeline import Pipeline
from gateway.positions import image_layout
from gateway.responses import ModelCard
from services.common.device import resolve_device
from services.common.health import AUDIO_SERVICE, DECODER_SERVICE, VISION_SERVICE

MODEL_INFO_TIMEOUT_S = 2.0
SERVICE_OF_MODALITY = {"text": DECODER_SERVICE, "image": VISION_SERVICE, "audio": AUDIO_SERVICE}


class Gateway:
    """What the routes share, built once at start-up."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.bundle = Bundle.load(config.bundle)
        prompter = ChatPrompter.from_pretrained(self.bundle.decoder, self.bundle.modalities)
        fusion = FusionStage.for_bundle(
            self.bundle, resolve_device(config.device), config.fusion_dtype
        )
        self.http = httpx.AsyncClient()
        self.clients = ServiceClients(config)
        self.loop = asyncio.get_running_loop()  # built in the lifespan, on the server's loop
        layout = image_layout(self.bundle, config)
        media = MediaLoader(config, self.http, MediaTokenCounter.for_bundle(self.bundle, layout))
        self.pipeline = Pipeline(
            config, prompter, fusion, self.clients, media, self.bundle.modalities, layout
        )
        self.formatter = Formatter(
            model=self.bundle.served_model_name,
            system_fingerprint=f"autoglm-serve-{importlib.metadata.version('autoglm-serve')}",
            tokenizer=prompter.tokenizer.backend_tokenizer,
        )
        self.started = int(time.time())
        # the services this bundle needs: no audio encoder for a model that takes no audio
        self.backends = [SERVICE_OF_MODALITY[m] for m in self.bundle.modalities]

    async def close(self) -> None:
        await self.clients.close()
        await self.http.aclose()

    def check_model(self, name: str) -> None:
        if name != self.bundle.served_model_name:
            raise ModelNotFound(f"The model `{name}` does not exist.", param="model")

    async def model_card(self) -> ModelCard:
        """The served model; its context length comes from the decoder when it answers."""
        try:
            info = await self.clients.decoder_info(uuid.uuid4().hex, timeout=MODEL_INFO_TIMEOUT_S)
        except grpc.aio.AioRpcError:
            max_model_len = None
        else:
            max_model_len = info.max_model_len
        return ModelCard(
            id=self.bundle.served_model_name,
            created=self.started,
            max_model_len=max_model_len,
            modalities=list(self.bundle.modalities),
        )
