"""LLM.int8() for the encoder towers: every Linear becomes a bitsandbytes ``Linear8bitLt``.

Only the Linear layers change. Norms, embeddings and convolutional front-ends keep their
full-precision weights and run in the model's dtype (fp32 on CPU); each int8 layer takes that
dtype in and gives it back out. bitsandbytes quantizes activations from fp16, so the layer casts
its input itself: handing it fp32 would work too, but logs a warning on every call.

Quantization happens when a layer's weight moves from the CPU to a device (``.to(device)``, on
the CPU too): the weight becomes int8 with one fp32 scale per output row. The layers are put in
``eval()``: in training mode bitsandbytes' CPU path dequantizes the weight on every call and
runs 12-50x slower.
"""

from __future__ import annotations

import bitsandbytes as bnb
import torch
from torch import nn

# LLM.int8()'s outlier threshold: activation columns holding a value above it are multiplied
# in fp16 instead of int8 (the paper's default; 0 disables the decomposition).
DEFAULT_THRESHOLD = 6.0


class Int8Linear(bnb.nn.Linear8bitLt):
    """``Linear8bitLt`` that accepts any float input and answers in the input's dtype."""

    @classmethod
    def from_linear(cls, linear: nn.Linear, threshold: float) -> Int8Linear:
        """An unquantized copy of ``linear``; ``.to(device)`` quantizes it."""
        layer = cls(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            has_fp16_weights=False,
            threshold=threshold,
            device="meta",  # no throw-away allocation: the weight is replaced just below
        )
        weight = linear.weight.detach().to("cpu", torch.float32)
        layer.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
        if linear.bias is not None:
            # The int8 matmul adds the bias in the activation dtype, fp16.
            bias = linear.bias.detach().to("cpu", torch.float16)
            layer.bias = nn.Parameter(bias, requires_grad=False)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Flatten to rows (bitsandbytes reshapes 3-D inputs only) and quantize from fp16.
        rows = x.reshape(-1, x.shape[-1]).to(torch.float16)
        out = super().forward(rows)
        return out.reshape(*x.shape[:-1], self.out_features).to(x.dtype)


def quantize_linears(
    model: nn.Module, device: torch.device, threshold: float = DEFAULT_THRESHOLD
) -> int:
    """Replace every ``nn.Linear`` of ``model`` in place by an int8 layer on ``device``.

    ``model`` must still be on the CPU (bitsandbytes quantizes on the move off it). Subclasses
    of Linear are left alone: ``nn.MultiheadAttention`` reads its ``out_proj`` (a subclass)
    weight directly. Returns the number of layers converted; the model is left in eval mode.
    """
    if threshold < 0:
        raise ValueError(f"the outlier threshold must be >= 0, got {threshold}")
    targets = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is nn.Linear
    ]
    for parent, name, child in targets:
        if child.weight.device.type != "cpu":
            raise ValueError("quantize_linears needs the model on the CPU; move it afterwards")
        setattr(parent, name, Int8Linear.from_linear(child, threshold).to(device))
    model.eval()
    return len(targets)


def weight_bytes(model: nn.Module) -> int:
    """Bytes held by the model's parameters and buffers, int8 scales included."""
    total = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    for layer in model.modules():
        if isinstance(layer, Int8Linear):
            # bitsandbytes moves the scales from the weight to the layer state on first use.
            scale = getattr(layer.weight, "SCB", None)
            scale = layer.state.SCB if scale is None else scale
            if scale is not None:
                total += scale.numel() * scale.element_size()
    return total
