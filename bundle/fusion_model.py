"""The default bundle's fusion model: encoder embeddings -> decoder-width embeddings.

Each modality has a projector to the decoder width, a modality embedding, then attention blocks
over the tokens of ONE media item. Attention never crosses items: an item's embeddings are the
same whatever else the request carries, so a conversation that adds a screenshot keeps the
decoder's prefix cache for everything before it. Each block calls ``scaled_dot_product_attention``
without a mask, whose flash / memory-efficient kernels keep memory linear in the item's tokens.
Never quantized; the gateway runs it (gateway/fusion.py) and `autoglm bundle init` writes it.
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


class ItemAttentionBlock(nn.Module):
    """Pre-norm transformer block over the tokens of one media item."""

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
        # 4-D [1, heads, n, head_dim]: with 3-D inputs torch's CPU SDPA falls back to the math
        # path, which materialises the [heads, n, n] scores.
        qkv = self.qkv(self.attn_norm(x)).view(1, n, 3, self.num_heads, -1)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, width)
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
            ItemAttentionBlock(config.hidden_size, config.num_attention_heads)
            for _ in range(config.num_layers)
        )

    def fuse_image(
        self, states: torch.Tensor, grid_thw: tuple[int, int, int] | None
    ) -> torch.Tensor:
        """One image's [rows, vision width] -> [rows, decoder width] (the grid is not needed)."""
        return self._fuse(self.vision_proj, VISION, states)

    def fuse_audio(self, states: torch.Tensor) -> torch.Tensor:
        """One clip's [rows, audio width] -> [rows, decoder width]."""
        return self._fuse(self.audio_proj, AUDIO, states)

    def _fuse(self, projector: Projector, modality: int, states: torch.Tensor) -> torch.Tensor:
        weight = self.modality.weight
        x = projector(states.to(weight.device, weight.dtype)) + weight[modality]
        for block in self.blocks:
            x = block(x)
        return x

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
