"""The asymmetric min-max quantizer GPTQ shares, and round-to-nearest (RTN), the baseline.

A group of weights ``w`` gets a scale and an integer zero point so that
``w ~ scale * (q - zero)`` with ``q`` in ``[0, 2**bits - 1]``, as GPTQ checkpoints store it.
"""

from __future__ import annotations

import torch

from quantize.checkpoint import QuantizedWeight


def grid_params(weights: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point per output row of ``weights`` [out, n], both shaped [out].

    The range always contains 0 (as in the reference GPTQ quantizer). The zero point is kept
    at 1 or more: the v1 checkpoint layout stores ``zero - 1`` in ``bits`` bits, and external
    kernels (vLLM, ExLlama) read a stored all-ones nibble as ``2**bits``, not as 0.
    """
    maxq = 2**bits - 1
    low = weights.min(dim=1).values.clamp(max=0)
    high = weights.max(dim=1).values.clamp(min=0)
    empty = (low == 0) & (high == 0)
    low[empty], high[empty] = -1.0, 1.0
    # Checkpoints store scales in fp16: quantize against the scale a loader will read.
    scale = ((high - low) / maxq).clamp(min=1e-7).to(torch.float16).float()
    zero = torch.round(-low / scale).clamp(1, maxq)
    return scale, zero


def quantize_column(
    column: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int
) -> torch.Tensor:
    """The integer codes of ``column`` (any shape broadcasting with scale/zero)."""
    return torch.clamp(torch.round(column / scale) + zero, 0, 2**bits - 1)


def group_size_for(in_features: int, group_size: int) -> int:
    """The effective group size: ``-1`` means one group over the whole input (per-channel)."""
    if group_size == -1:
        return in_features
    if group_size <= 0:
        raise ValueError(f"group size must be positive or -1 (per-channel), got {group_size}")
    return group_size


def rtn_quantize(weight: torch.Tensor, bits: int, group_size: int) -> QuantizedWeight:
    """Round every weight to its group's nearest grid point, with no error compensation."""
    out_features, in_features = weight.shape
    size = group_size_for(in_features, group_size)
    weight = weight.detach().float()
    q = torch.empty(out_features, in_features, dtype=torch.uint8)
    scales, zeros = [], []
    for start in range(0, in_features, size):
        block = weight[:, start : start + size]
        scale, zero = grid_params(block, bits)
        q[:, start : start + size] = quantize_column(block, scale[:, None], zero[:, None], bits).to(
            torch.uint8
        )
        scales.append(scale)
        zeros.append(zero)
    return QuantizedWeight(
        q=q,
        zeros=torch.stack(zeros).to(torch.int32),
        scales=torch.stack(scales),
        g_idx=torch.arange(in_features, dtype=torch.int32) // size,
        bits=bits,
    )
