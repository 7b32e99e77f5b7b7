"""Rotary position embedding of the GLM-4 decoders, from explicit per-token positions.

GLM-4 rotates interleaved pairs (x[2i], x[2i+1]) of the first ``rotary_dim`` features of each
head (``partial_rotary_factor``). GLM-4.1V's text model adds 3-D mRoPE: every token has a
(t, h, w) position, and rotary frequency i takes its angle from one of the three rows, the first
``mrope_section[0]`` frequencies from t, the next ``mrope_section[1]`` from h, the rest from w
(transformers' ``Glm4vTextRotaryEmbedding.recomposition_frequencies``). A text token has the
same value in all three rows, so its angles equal 1-D RoPE's: 1-D positions stay the fast path.

The step computes cos/sin once for all layers, spread over the whole head: each frequency's
value on both features of its pair, and on the features past rotary_dim cos 1, sin 0. Then one
rotation is ``x * cos + swap(x) * sin`` with the pairs swapped and the sign in ``sin``: four
ops on q and k together instead of slicing, stacking and concatenating per call, and the same
bf16 roundings as the pairwise formula, so the results are bit for bit those of transformers.
"""

from __future__ import annotations

import torch
from torch import nn

from services.decoder.text_config import TextModelConfig

# (cos, signed sin) of every packed token, from RotaryEmbedding
Rope = tuple[torch.Tensor, torch.Tensor]


class RotaryEmbedding(nn.Module):
    """cos and signed sin [tokens, 1, head_dim] from positions [tokens] or [axes, tokens]:
    ``(c0, c0, c1, c1, ..., 1, ...)`` and ``(-s0, s0, -s1, s1, ..., 0, ...)``."""

    inv_freq: torch.Tensor
    axis_of: torch.Tensor

    def __init__(self, config: TextModelConfig) -> None:
        super().__init__()
        self.rotary_dim = config.rotary_dim
        self.head_dim = config.head_dim
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
        tokens = freqs.shape[0]
        cos = torch.ones(tokens, self.head_dim, dtype=dtype, device=positions.device)
        sin = torch.zeros(tokens, self.head_dim, dtype=dtype, device=positions.device)
        sin_f = freqs.sin()
        cos[:, : self.rotary_dim] = freqs.cos().repeat_interleave(2, dim=-1)
        sin[:, : self.rotary_dim] = torch.stack((-sin_f, sin_f), dim=-1).flatten(-2)
        return cos[:, None, :], sin[:, None, :]


def apply_rotary(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Rotate interleaved pairs (x[2i], x[2i+1]) of the first rotary_dim features of each head:
    ``(x0 * c - x1 * s, x1 * c + x0 * s)``, ``x`` [tokens, heads, head_dim]. ``out`` may be x
    itself (both products are computed before it is written)."""
    swapped = x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)
    return torch.add(x * cos, swapped * sin, out=out)
