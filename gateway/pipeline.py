"""One request's way through the gateway, between the HTTP layer and the services.

``prepare_*`` does everything before generation (media checks and hashing, the encoders
concurrently, FP16 fusion, the chat template with placeholder spans) and hands back a
``gateway.job.Job``, whose ``events()`` then runs the request's n choices on the decoder.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any

import anyio
import grpc
import torch

from gateway.chat import ChatPrompter, Prompt
from gateway.clients import Deadline, ServiceClients
from gateway.config import GatewayConfig
from gateway.constraints import output_constraint
from gateway.errors import ApiError, ContextLengthExceeded
from gateway.events import Counts
from gateway.fusion import FusionStage
from gateway.job import Job
from gateway.media import Media, MediaLoader
from gateway.positions import Grid, ImageLayout
from gateway.protocol.chat_completions import ChatCompletionRequest, ChatInput
from gateway.protocol.common import GenerationParams
from gateway.protocol.completions import CompletionRequest
from gateway.protocol.messages import ImagePart, MediaPart
from gateway.reasoning import END_THINK, OutputParser, ReasoningOutput
from gateway.tools import CallExtractor
from services.decoder.constraint_spec import Constraint
from services.decoder.positions import PositionIds
from services.decoder.types import GenerateRequest, MultimodalSegment

log = logging.getLogger(__name__)


def _rows(media: Sequence[Media], embeddings: Sequence[torch.Tensor]) -> list[tuple[str, int]]:
    return [(m.kind, int(e.shape[0])) for m, e in zip(media, embeddings, strict=True)]


class Pipeline:
    def __init__(
        self,
        config: GatewayConfig,
        prompter: ChatPrompter,
        fusion: FusionStage,
        clients: ServiceClients,
        media: MediaLoader,
        modalities: Sequence[str],
        layout: ImageLayout | None = None,
    ) -> None:
        self.config = config
        self.prompter = prompter
        self.tokenizer = prompter.tokenizer.backend_tokenizer
        self.fusion = fusion
        self.clients = clients
        self.media = media
        self.modalities = tuple(modalities)
        self.layout = layout  # GLM-4.1V: image grids and 3-D positions; None: 1-D positions
        self._context_length: int | None = None

    def _check_modalities(self, parts: Sequence[MediaPart]) -> None:
        """Media of a kind the model has no encoder for is a 400, before anything runs."""
        for part in parts:
            kind = "image" if isinstance(part, ImagePart) else "audio"
            if kind not in self.modalities:
                raise ApiError(
                    f"this model has no {kind} encoder: it takes {', '.join(self.modalities)}",
                    param="messages",
                )

    async def _load(self, body: ChatInput) -> list[Media]:
        self._check_modalities(body.media_parts())
        return await self.media.load(body.media_parts())

    async def _embed(
        self, media: list[Media], grids: list[Grid], request_id: str, deadline: Deadline
    ) -> list[torch.Tensor]:
        """Each item's embeddings in request order: the encoders concurrently, then fusion."""
        encoded = await self.clients.encode(media, request_id, deadline)
        vision = [e for m, e in zip(media, encoded, strict=True) if m.kind == "image"]
        audio = [e for m, e in zip(media, encoded, strict=True) if m.kind == "audio"]
        if self.layout:
            self.layout.check(grids, [e.grid_thw for e in vision])
        fused_vision, fused_audio = (
            await anyio.to_thread.run_sync(self.fusion.fuse, vision, audio) if media else ([], [])
        )
        fused = iter(fused_vision), iter(fused_audio)
        # back to request order: fusion returns all images, then all clips
        return [next(fused[0] if m.kind == "image" else fused[1]) for m in media]

    async def _render(self, body: ChatInput, media_rows: list[tuple[str, int]]) -> Prompt:
        """The chat template over the messages, each media item ``rows`` tokens wide;
        rendering and tokenizing are CPU work on bounded inputs (limits.check_input_size)."""
        return await anyio.to_thread.run_sync(
            functools.partial(
                self.prompter.render,
                body.messages,
                media_rows,
                enable_thinking=body.thinking,
                add_generation_prompt=body.add_generation_prompt,
                tools=[tool.model_dump(exclude_none=True) for tool in body.tools or ()] or None,
                template_kwargs=dict(body.chat_template_kwargs or {}),
            )
        )

    async def chat_prompt(self, body: ChatInput, request_id: str) -> Prompt:
        """The prompt a chat request with these messages gets (/tokenize). GLM-4.1V images are
        counted from their headers without encoding; other bundles' media by their encoders."""
        media = await self._load(body)
        if self.layout:  # a GLM-4.1V bundle takes images only
            return await self._render(
                body, [("image", self.layout.tokens(grid)) for grid in self.layout.grids(media)]
            )
        deadline = Deadline(self.config.request_timeout_s)
        embeddings = await self._embed(media, [], request_id, deadline)
        return await self._render(body, _rows(media, embeddings))

    async def prepare_chat(self, body: ChatCompletionRequest, request_id: str) -> Job:
        deadline = Deadline(self.config.request_timeout_s)
        media = await self._load(body)
        grids = self.layout.grids(media) if self.layout else []
        counted: list[tuple[str, int]] = [(m.kind, m.tokens) for m in media]
        prompt = None
        if media:  # the prompt's length from the media headers, before any encoder runs
            prompt = await self._render(body, counted)
            await self._check_context_length(body, len(prompt.input_ids), request_id)
        embeddings = await self._embed(media, grids, request_id, deadline)
        rows = _rows(media, embeddings)
        if prompt is None or rows != counted:  # rendered again only if the encoders disagree
            prompt = await self._render(body, rows)
        segments = tuple(
            MultimodalSegment(p.offset, e)
            for p, e in zip(prompt.placeholders, embeddings, strict=True)
        )
        positions = self.layout.positions(prompt, grids) if self.layout else None
        log.info(
            "%s: %d prompt tokens (%d image, %d audio), %d media items",
            request_id, len(prompt.input_ids), prompt.media_tokens("image"),
            prompt.media_tokens("audio"), len(media),
        )  # fmt: skip
        parser = dict(thinking=body.thinking, reasoning=self._reasoning_output(body))
        constraint = output_constraint(body, self.tokenizer.token_to_id(END_THINK))
        job = ("chatcmpl", body, request_id, deadline, prompt, segments, parser, positions)
        prepared = await self._job(*job, constraint=constraint)
        if body.parses_tool_calls:
            names = {tool.function.name for tool in body.tools or ()}
            forced = bool(body.forced_tools)
            prepared.new_extractor = lambda: CallExtractor(names, forced)
        return prepared

    def _reasoning_output(self, body: ChatCompletionRequest) -> ReasoningOutput:
        """Inline (request field, else the server default) beats separate beats left out."""
        inline = body.keep_reasoning_inline
        if inline is None:
            inline = self.config.keep_reasoning_inline
        if inline:
            return ReasoningOutput.INLINE
        return ReasoningOutput.SEPARATE if body.return_reasoning else ReasoningOutput.DROP

    async def prepare_completion(self, body: CompletionRequest, request_id: str) -> Job:
        ids = await anyio.to_thread.run_sync(self.prompter.encode_prompt, body.prompt_text)
        prompt = Prompt(ids, [])
        deadline = Deadline(self.config.request_timeout_s)
        parser = {"split_reasoning": False}
        return await self._job("cmpl", body, request_id, deadline, prompt, (), parser)

    async def max_model_len(self, request_id: str) -> int | None:
        """The decoder's context length, asked once; None while it does not answer (the
        decoder then still caps each completion at the context it has left)."""
        if self._context_length is None:
            with contextlib.suppress(grpc.aio.AioRpcError):
                info = await self.clients.decoder_info(request_id)
                self._context_length = info.max_model_len
        return self._context_length

    async def _check_context_length(
        self, body: GenerationParams, prompt_tokens: int, request_id: str
    ) -> None:
        """A prompt without room for one token, or an explicit max_tokens that cannot fit
        beside it, is a 400, as OpenAI and vLLM answer it; the server's default max_tokens is
        only ever capped."""
        requested = body.requested_max_tokens() or 1
        limit = await self.max_model_len(request_id)
        if limit and prompt_tokens + requested > limit:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {limit} tokens. However, you "
                f"requested {prompt_tokens + requested} tokens ({prompt_tokens} in the "
                f"messages, {requested} in the completion). Please reduce the length of the "
                "messages or completion.",
                param="messages",
            )

    async def _job(
        self,
        prefix: str,
        body: GenerationParams,
        request_id: str,
        deadline: Deadline,
        prompt: Prompt,
        segments: tuple[MultimodalSegment, ...],
        parser: dict[str, Any],
        positions: PositionIds | None = None,
        constraint: Constraint | None = None,
    ) -> Job:
        await self._check_context_length(body, len(prompt.input_ids), request_id)
        stopping = body.to_stopping_params(self.config.default_max_tokens)
        job_id = f"{prefix}-{uuid.uuid4().hex}"
        requests = [
            GenerateRequest(
                request_id=f"{job_id}-{i}",  # unique even when a client reuses its request id
                input_ids=tuple(prompt.input_ids),
                sampling=body.to_sampling_params(i),
                stopping=stopping,
                segments=segments,
                positions=positions,
                constraint=constraint,
            )
            for i in range(body.n)
        ]
        stops = body.stop_strings
        return Job(
            id=job_id,
            request_id=request_id,
            created=int(time.time()),
            params=body,
            generate_requests=requests,
            new_parser=lambda: OutputParser(self.tokenizer, stop=stops, **parser),
            clients=self.clients,
            deadline=deadline,
            counts=Counts(
                prompt_tokens=len(prompt.input_ids),
                image_tokens=prompt.media_tokens("image"),
                audio_tokens=prompt.media_tokens("audio"),
            ),
        )
