"""Encoder towers: what a tower kind provides, loading one from its Hugging Face folder (INT8 by
default), and making a loaded one ready to serve."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, TypeVar

import torch
from transformers import AutoModel, PreTrainedModel

from services.encoder.config import EncoderConfig
from services.encoder.int8 import DEFAULT_THRESHOLD, quantize_linears, weight_bytes
from services.encoder.pipeline import MediaEncoder, RequestBudget
from services.encoder.types import Embedding, EncoderInfo

log = logging.getLogger(__name__)

# Norms, embeddings, convolutions and every other non-quantized layer run in fp32 (the design
# keeps them at full precision); the int8 layers cast to fp16 inside.
COMPUTE_DTYPE = torch.float32

T = TypeVar("T")


class Tower(Protocol[T]):
    """A tower kind (SiglipVisionModel, Wav2Vec2Model + RMSNorm, ...) wrapped for serving: its
    model answers Info; ``encode`` turns decoded inputs into one fp16 [n_tokens, hidden] CPU
    tensor each, in order."""

    @property
    def model(self) -> PreTrainedModel: ...

    def warm_up(self) -> None: ...

    def encode(self, inputs: list[T], /) -> list[torch.Tensor]: ...


def load_tower(
    folder: Path, device: torch.device, quantization: str, threshold: float = DEFAULT_THRESHOLD
) -> PreTrainedModel:
    """A saved HF encoder (any AutoModel architecture) on ``device``, int8 unless told "none"."""
    if quantization not in ("int8", "none"):
        raise ValueError(f"unknown quantization {quantization!r}")
    model = AutoModel.from_pretrained(folder, dtype=COMPUTE_DTYPE).eval()
    fp32_bytes = weight_bytes(model)
    if quantization == "int8":
        count = quantize_linears(model, device, threshold)
        log.info(
            "%s: %d Linear layers in LLM.int8() (threshold %.1f), weights %.2f MB (FP32 %.2f MB)",
            type(model).__name__, count, threshold, weight_bytes(model) / 1e6, fp32_bytes / 1e6,
        )  # fmt: skip
    return model.to(device)


def tower_info(model: PreTrainedModel, config: EncoderConfig) -> EncoderInfo:
    """What the Info RPC reports about a loaded tower."""
    return EncoderInfo(
        model=type(model).__name__,
        device=str(next(model.parameters()).device),
        dtype=str(COMPUTE_DTYPE).removeprefix("torch."),
        quantization=config.quantization,
        hidden_size=int(model.config.hidden_size),
        max_items=config.max_items,
    )


def ready_encoder(
    tower: Tower[T],
    decode: Callable[[bytes], T],
    config: EncoderConfig,
    budget: RequestBudget | None = None,
) -> MediaEncoder[T]:
    """The tower warmed up (one full batch: start-up fails, not the first request, if the device
    cannot hold it, and lazy initialisation is paid before SERVING), behind its decoder."""
    tower.warm_up()

    def encode(inputs: list[T]) -> list[Embedding]:
        return [Embedding(tensor) for tensor in tower.encode(inputs)]

    info = tower_info(tower.model, config)
    return MediaEncoder(decode=decode, encode=encode, info=info, budget=budget)
