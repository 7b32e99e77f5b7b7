"""Rotary position embedding of the GLM-4 decoders, from explicit per-token positions.

GLM-4 rotates interleaved pairs (x[2i], x[2i+1]) of the first ``rotary_dim`` features of each
head (``partial_rotary_factor``). GLM-4.1V's text model adds 3-D mRoPE: every token has a
(t, h, w) position, and rotary frequency i takes its angle from one of the three rows, the first
``mrope_section[0]`` frequencies from t, the next ``mrope_section[1]`` from h, the rest from w
(transformers' ``Glm4vTextRotaryEmbedding.recomposition_frequencies``). A text token has the
same value in all three rows, so its angles equal 1-D RoPE's: 1-D positions stay the fast path.
"""

from __future__ import annotations

import torch
from torch import nn

from services.decoder.text_config import TextModelConfig

Rope = tuple[torch.Tensor, ...]  # (cos, sin) of every packed token, from RotaryEmbedding


class RotaryEmbedding(nn.Module):
    """cos/sin [tokens, 1, rotary_dim / 2] from positions [tokens] or [axes, tokens]."""

    inv_freq: torch.Tensor
    axis_of: torch.Tensor

    def __init__(self, config: TextModelConfig) -> None:
        super().__init__()
        self.rotary_dim = config.rotary_dim
        # built on the CPU explicitly: the model itself may be constructed on the meta device
        exponents = torch.arange(0, self.rotary_dim, 2, dtype=torch.float32, device="cpu")
        inv_freq = 1.0 / (config.rope_theta ** (exponents / self.rotary_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        # the position row each frequency reads: [0] * section[0] + [1] * section[1] + ...
        sections = config.mrope_section or (self.rotary_dim // 2,)
        axes = [axis for axis, n in enumerate(sections) for _ in range(n)]
        self.register_buffer("axis_of", torch.tensor(axes, device="cpu"), persistent=False)
        self.axes = len(sections)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> Rope:
        if positions.dim() == 1:
            freqs = positions.float()[:, None] * self.inv_freq  # [tokens, rotary_dim / 2]
        elif positions.dim() == 2 and positions.shape[0] == self.axes:
            # [axes, tokens] -> each frequency's own row -> [tokens, rotary_dim / 2]
            freqs = positions.float()[self.axis_of].T * self.inv_freq
        else:
            raise ValueError(
                f"positions must be [tokens] or [{self.axes}, tokens], got {tuple(positions.shape)}"
            )
        return freqs.cos().to(dtype)[:, None, :], freqs.sin().to(dtype)[:, None, :]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs (x[2i], x[2i+1]) of the first rotary_dim features of each head."""
    rotary_dim = cos.shape[-1] * 2
    rot, rest = x[..., :rotary_dim], x[..., rotary_dim:]
    even, odd = rot[..., 0::2], rot[..., 1::2]
    rotated = torch.stack((even * cos - odd * sin, odd * cos + even * sin), dim=-1).flatten(-2)
    return torch.cat((rotated, rest), dim=-1)
