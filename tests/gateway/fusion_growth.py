"""The default fusion's peak memory for one image, measured in a fresh process: this module is
what that process imports first (torch and the fusion stage, not transformers), so it stays
apart from the tests."""

from __future__ import annotations

import torch

from bundle.fusion_model import FusionConfig, FusionModel
from gateway.fusion import FusionStage
from services.encoder.types import Embedding
from tests.memory import peak_growth_bytes

FUSION_WIDTH = FusionConfig(
    vision_hidden_size=64, audio_hidden_size=64, hidden_size=128, num_attention_heads=2
)


def items(*shapes: tuple[int, int], seed: int = 0) -> list[Embedding]:
    generator = torch.Generator().manual_seed(seed)
    return [Embedding(torch.randn(*shape, generator=generator)) for shape in shapes]


def fusion_peak_growth(tokens: int) -> int:
    """Peak memory growth of fusing one image of ``tokens`` rows."""
    torch.manual_seed(0)
    stage = FusionStage(FusionModel(FUSION_WIDTH).eval(), torch.float32)
    [image] = items((tokens, FUSION_WIDTH.vision_hidden_size))
    return peak_growth_bytes(lambda: stage.fuse([image], []))[1]
