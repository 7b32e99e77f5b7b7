"""FP16 cross-modal fusion: encoder embeddings -> decoder-width embeddings.

Each modality has a projector to the decoder width; then cross-modal attention blocks run over
all of one request's vision and audio tokens together (a modality embedding tells them apart),
so an image token can attend to the audio the user spoke about it. Never quantized.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
VISION, AUDIO = 0, 1


@dataclasses.dataclass(frozen=True)
class FusionConfig:
    vision_hidden_size: int
    audio_hidden_size: int
    hidden_size: int  # the decoder's
    num_attention_heads: int = 4
    num_layers: int = 1

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be divisible by num_attention_heads")


class Projector(nn.Module):
    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, out_features)
        self.fc2 = nn.Linear(out_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class CrossModalBlock(nn.Module):
    """Pre-norm transformer block; attention spans every media token of the request."""

    def __init__(self, hidden_size: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.attn_norm = nn.LayerNorm(hidden_size)
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.out = nn.Linear(hidden_size, hidden_size)
        self.mlp_norm = nn.LayerNorm(hidden_size)
        self.mlp = Projector(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, width = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).view(n, 3, self.num_heads, -1).permute(1, 2, 0, 3)
        attended = F.scaled_dot_product_attention(q, k, v).transpose(0, 1).reshape(n, width)
        x = x + self.out(attended)
        return x + self.mlp(self.mlp_norm(x))


class FusionModel(nn.Module):
    def __init__(self, config: FusionConfig) -> None:
        super().__init__()
        self.config = config
        self.vision_proj = Projector(config.vision_hidden_size, config.hidden_size)
        self.audio_proj = Projector(config.audio_hidden_size, config.hidden_size)
        self.modality = nn.Embedding(2, config.hidden_size)
        self.blocks = nn.ModuleList(
            CrossModalBlock(config.hidden_size, config.num_attention_heads)
            for _ in range(config.num_layers)
        )

    @property
    def device(self) -> torch.device:
        return self.modality.weight.device

    @torch.inference_mode()
    def fuse(
        self, vision: list[torch.Tensor], audio: list[torch.Tensor]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """One request's per-item encoder outputs -> per-item decoder-width fp16 embeddings
        with the same row counts, in the same order."""
        if not vision and not audio:
            return [], []
        dtype = self.modality.weight.dtype
        parts = [
            self.vision_proj(v.to(self.device, dtype)) + self.modality.weight[VISION]
            for v in vision
        ]
        parts += [
            self.audio_proj(a.to(self.device, dtype)) + self.modality.weight[AUDIO] for a in audio
        ]
        x = torch.cat(parts)
        for block in self.blocks:
            x = block(x)
        fused = list(x.to(torch.float16).split([p.shape[0] for p in parts]))
        return fused[: len(vision)], fused[len(vision) :]

    def save_pretrained(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        (path / CONFIG_FILE).write_text(
            json.dumps(dataclasses.asdict(self.config), indent=2) + "\n"
        )
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, path / WEIGHTS_FILE)

    @classmethod
    def from_pretrained(
        cls, path: Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float16
    ) -> FusionModel:
        config = FusionConfig(**json.loads((path / CONFIG_FILE).read_text()))
        model = cls(config)
        model.load_state_dict(load_file(path / WEIGHTS_FILE))
        return model.to(device=device, dtype=dtype).eval()
