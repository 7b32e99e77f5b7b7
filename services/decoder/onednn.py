"""Linear layers whose weights are repacked once for oneDNN: the CPU's fast small-batch GEMM.

On the CPU, ``nn.Linear`` multiplies by the row-major weight as stored on every call. oneDNN can
instead reorder the weight once, at load, into the blocked layout its kernels stream through,
which is what IPEX and inductor's weight prepacking do. On the bench decoder's shapes (2 cores,
fp32) that makes a decode step's GEMMs 1.2x to 3.7x faster, with the same results up to float
rounding (tests/decoder/test_onednn.py; bench/decode.py has the end-to-end figure).

Only plain ``nn.Linear`` layers are swapped: quantized layers (GPTQ, bitsandbytes) subclass or
replace it and keep their own kernels.
"""

from __future__ import annotations

import torch
from torch import nn


class OneDnnLinear(nn.Module):
    """``nn.Linear``'s maths on a weight reordered for oneDNN (an opaque ``torch._mkldnn``
    tensor: it can be multiplied by, not indexed or saved)."""

    weight: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        with torch.no_grad():
            packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), None)
        self.register_buffer("weight", packed)
        bias = None if linear.bias is None else linear.bias.detach()
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, oneDNN"


def can_prepack(linear: nn.Module) -> bool:
    """A plain Linear on the CPU in a dtype oneDNN computes natively here."""
    if type(linear) is not nn.Linear or not torch.backends.mkldnn.is_available():
        return False
    weight = linear.weight
    if weight.device.type != "cpu":
        return False
    if weight.dtype == torch.float32:
        return True
    return weight.dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def prepack_linears(model: nn.Module) -> int:
    """Swap every Linear that ``can_prepack`` for a ``OneDnnLinear``; returns how many."""
    targets = [(name, m) for name, m in model.named_modules() if can_prepack(m)]
    for name, linear in targets:
        assert isinstance(linear, nn.Linear)
        model.set_submodule(name, OneDnnLinear(linear))
    return len(targets)
