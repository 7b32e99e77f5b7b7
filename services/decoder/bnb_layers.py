"""bitsandbytes replacements for a decoder Linear: NF4 (QLoRA's 4-bit) and LLM.int8().

Imported only when one of them is asked for, since bitsandbytes is slow to import.
"""

from __future__ import annotations

import bitsandbytes as bnb
import torch
from torch import nn

from services.encoder.int8 import DEFAULT_THRESHOLD, Int8Linear


def nf4_linear(linear: nn.Linear, device: torch.device) -> nn.Module:
    """NF4 weights with double quantization (the absmax statistics quantized too), bf16 compute."""
    layer = bnb.nn.Linear4bit(
        linear.in_features,
        linear.out_features,
        bias=linear.bias is not None,
        compute_dtype=torch.bfloat16,
        compress_statistics=True,
        quant_type="nf4",
    )
    layer.weight = bnb.nn.Params4bit(
        linear.weight.data.float().cpu(),
        requires_grad=False,
        quant_type="nf4",
        compress_statistics=True,
    )
    if linear.bias is not None:
        layer.bias = nn.Parameter(linear.bias.data.clone(), requires_grad=False)
    # Moving Params4bit to a device is what quantizes it.
    return layer.to(device).eval()


def int8_linear(
    linear: nn.Linear, device: torch.device, threshold: float = DEFAULT_THRESHOLD
) -> nn.Module:
    """LLM.int8(): int8 weights per output row, outlier input columns in fp16 (the same layer
    the encoder towers use)."""
    # In training mode bitsandbytes dequantizes on every call (12-50x slower on CPU).
    return Int8Linear.from_linear(linear, threshold).to(device).eval()
