"""GPTQLinear: a Linear whose weight is a GPTQ checkpoint's, run by torch's int4 kernels.

At construction the checkpoint tensors are unpacked once and repacked for the device's int4
kernel: ``_weight_int4pack_mm_for_cpu`` on CPU, tinygemm (``_weight_int4pack_mm``) on CUDA.
Both compute ``w = (q - 8) * scale + zero`` per group, so GPTQ's ``scale * (q - z)`` becomes
``zero = scale * (8 - z)``, and both run on bf16 activations: tinygemm takes nothing else, and
the CPU kernel's fp32/fp16 paths are scalar, some 40x slower than its bf16 one. Activations
are cast around the call, so the module works in any model dtype.

Act-order checkpoints (``g_idx`` not monotonic) run by sorting the input columns by group,
then permuting each input the same way. Anything the kernels refuse (8-bit, widths not a
multiple of 16, groups they do not support) dequantizes on every call.

On the CPU the int4 kernel only wins at few rows per call: from ``dequant_rows`` rows on (given,
or by default this CPU's row from ``int4_dequant.table_rows``: prefill chunks on an AMX CPU) a
call unpacks the same packed codes to bf16, a chunk at a time, and runs oneDNN's bf16 GEMM
instead (int4_dequant). At load, ``use_fused_gemm`` moves those calls to the fused int4 GEMM
(int4_amx: the same weights dequantized in cache, on AMX tiles, from ``int4_amx.FUSED_ROWS``
rows) where it can be built, and ``warm_up_unpacking`` builds oneDNN's GEMMs for every row
count where it cannot.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

from quantize.checkpoint import QuantizedWeight
from services.decoder import int4_amx
from services.decoder.int4_dequant import (
    can_dequantize,
    dequantized_mm,
    gemm_shape,
    table_rows,
    warm_up_gemms,
)

KERNEL_GROUP_SIZES = (256, 128, 64, 32)  # what both int4 kernels accept, largest first
CUDA_INNER_K_TILES = (8, 4, 2)
KERNEL_DTYPE = torch.bfloat16


class GPTQLinear(nn.Module):
    """``y = x W^T + b`` for a GPTQ-quantized W, on the device given at construction."""

    bias: torch.Tensor | None
    # The int4 kernels' form: packed codes, (scale, zero) per group, optional input permutation.
    packed: torch.Tensor
    scales_and_zeros: torch.Tensor
    perm: torch.Tensor | None
    # The fallback's form: the checkpoint's codes and group parameters, unpacked.
    q: torch.Tensor
    zeros: torch.Tensor
    scales: torch.Tensor
    g_idx: torch.Tensor

    def __init__(
        self,
        qweight: torch.Tensor,
        qzeros: torch.Tensor,
        scales: torch.Tensor,
        g_idx: torch.Tensor,
        bias: torch.Tensor | None = None,
        *,
        bits: int = 4,
        checkpoint_format: str = "gptq",
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        allow_kernel: bool = True,
        dequant_rows: int | Literal["table"] | None = "table",
    ) -> None:
        """``dequant_rows``: the CPU int4 kernel's rows from which to unpack to bf16 instead;
        "table" takes this CPU's from ``int4_dequant.table_rows``, None never unpacks."""
        super().__init__()
        device = torch.device(device)
        weight = QuantizedWeight.unpack(qweight, qzeros, scales, g_idx, bits, checkpoint_format)
        self.out_features, self.in_features = weight.q.shape
        self.bits = bits
        self.register_buffer("bias", None if bias is None else bias.to(device, dtype))
        layout = int4_layout(weight, device) if allow_kernel else None
        self.kernel = "dequantize" if layout is None else f"int4-{device.type}"
        self.dequant_rows: int | None = None
        self.rows_from_table = dequant_rows == "table"  # use_fused_gemm moves them
        self.fused = False  # whether those calls take int4_amx's kernel (use_fused_gemm)
        if layout is None:
            # Fallback: keep the codes as bytes, dequantize on every call.
            self.register_buffer("q", weight.q.to(device))
            self.register_buffer("zeros", weight.zeros.to(device, dtype))
            self.register_buffer("scales", weight.scales.to(device, dtype))
            self.register_buffer("g_idx", weight.g_idx.to(device, torch.long))
            return
        perm, group, inner_k_tiles = layout
        self.group = group
        self.register_buffer("perm", None if perm is None else perm.to(device))
        q = weight.q if perm is None else weight.q[:, perm]
        q = q.to(device, torch.int32)
        if device.type == "cuda":
            # tinygemm takes [N, K/2] bytes, the even column in the high nibble.
            q_bytes = (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8)
            packed = torch.ops.aten._convert_weight_to_int4pack(q_bytes, inner_k_tiles)
        else:
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, inner_k_tiles)
        self.register_buffer("packed", packed)
        scales_and_zeros = _scales_and_zeros(weight, group).to(device, KERNEL_DTYPE)
        self.register_buffer("scales_and_zeros", scales_and_zeros)
        if self.kernel == "int4-cpu" and can_dequantize(self.out_features, device):
            self.dequant_rows = table_rows() if dequant_rows == "table" else dequant_rows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x if x.dim() == 2 else x.reshape(-1, self.in_features)  # [tokens, in]: as is
        if self.kernel == "dequantize":
            y = x2 @ self.dequantized_weight().to(x.dtype).T
        else:
            if self.perm is not None:
                x2 = x2.index_select(1, self.perm)
            x2 = _as(x2, KERNEL_DTYPE).contiguous()
            sz = self.scales_and_zeros  # in KERNEL_DTYPE whatever the module is cast to (_apply)
            if self.dequant_rows is not None and x2.shape[0] >= self.dequant_rows:
                y = (
                    int4_amx.int4_mm(x2, self.packed, sz)
                    if self.fused
                    else dequantized_mm(x2, self.packed, sz, self.group)
                )
            elif self.kernel == "int4-cuda":
                y = torch.ops.aten._weight_int4pack_mm(x2, self.packed, self.group, sz)
            else:
                y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, self.packed, self.group, sz)
            y = _as(y, x.dtype)
        if self.bias is not None:
            y = y + _as(self.bias, y.dtype)
        return y if x.dim() == 2 else y.reshape(*shape[:-1], self.out_features)

    def _apply(self, fn: Callable[..., torch.Tensor], recurse: bool = True) -> GPTQLinear:
        """model.to(dtype) casts every floating buffer; the kernels' scales stay in theirs, so
        no call casts them again."""
        super()._apply(fn, recurse)
        if self.kernel != "dequantize":
            self.scales_and_zeros = _as(self.scales_and_zeros, KERNEL_DTYPE)
        return self

    def dequantized_weight(self) -> torch.Tensor:
        """The fallback's weight [out, in], rebuilt from the stored codes."""
        zeros = self.zeros[self.g_idx].T
        scales = self.scales[self.g_idx].T
        return (self.q.to(scales.dtype) - zeros) * scales

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bits={self.bits}, kernel={self.kernel}, dequant_rows={self.dequant_rows}, "
            f"fused={self.fused}"
        )


def unpacking_layers(model: nn.Module) -> list[GPTQLinear]:
    """The model's GPTQLinears that unpack from some row count (``dequant_rows``)."""
    return [m for m in model.modules() if isinstance(m, GPTQLinear) and m.dequant_rows]


def use_fused_gemm(model: nn.Module) -> int:
    """Move the unpacking layers' calls to int4_amx's fused kernel (and, where their crossover
    came from the table, to the fused kernel's); returns how many. Builds the kernel now;
    where it cannot be built, 0, and nothing changes."""
    layers = unpacking_layers(model)
    if not layers or not int4_amx.available():
        return 0
    for layer in layers:
        layer.fused = True
        if layer.rows_from_table:
            layer.dequant_rows = int4_amx.FUSED_ROWS
    return len(layers)


def warm_up_unpacking(model: nn.Module, max_rows: int) -> None:
    """Build oneDNN's GEMMs for every padded row count the (not fused) unpacking layers can
    see, from their crossover up to ``max_rows`` (a step's most rows), now rather than in a
    step."""
    layers = [m for m in unpacking_layers(model) if not m.fused]
    if not layers:
        return
    shapes = [gemm_shape(m.out_features, m.in_features) for m in layers]
    lowest = min(m.dequant_rows or max_rows for m in layers)
    warm_up_gemms(shapes, range(lowest, max_rows + 1))


def _as(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``tensor.to(dtype)`` without the dispatch when it is already in it (every call, here)."""
    return tensor if tensor.dtype == dtype else tensor.to(dtype)


def int4_layout(
    weight: QuantizedWeight, device: torch.device
) -> tuple[torch.Tensor | None, int, int] | None:
    """(input permutation, kernel group size, inner K tiles), or None if the kernel refuses."""
    out_features, in_features = weight.q.shape
    if weight.bits != 4 or device.type not in ("cpu", "cuda"):
        return None
    if out_features % (16 if device.type == "cpu" else 8):
        return None
    groups = weight.scales.shape[0]
    if in_features % groups:
        return None
    size = in_features // groups
    # Act-order: sort the columns by group; each group must then be one contiguous run.
    perm = torch.argsort(weight.g_idx.long(), stable=True)
    if not torch.equal(weight.g_idx.long()[perm], torch.arange(in_features) // size):
        return None
    group = next((g for g in KERNEL_GROUP_SIZES if size % g == 0), None)
    if group is None:
        return None
    if device.type == "cpu":
        inner_k_tiles = 1
    else:
        tiles = [t for t in CUDA_INNER_K_TILES if in_features % (t * 16) == 0]
        if not tiles:
            return None
        inner_k_tiles = tiles[0]
    identity = torch.equal(perm, torch.arange(in_features))
    return (None if identity else perm), group, inner_k_tiles


def _scales_and_zeros(weight: QuantizedWeight, group: int) -> torch.Tensor:
    """[in/group, out, 2] of (scale, zero) in the kernels' ``(q - 8) * scale + zero`` form.

    A checkpoint group wider than the kernel's group repeats its scale and zero.
    """
    repeat = weight.q.shape[1] // weight.scales.shape[0] // group
    scales = weight.scales.float().repeat_interleave(repeat, dim=0)
    zeros = weight.zeros.float().repeat_interleave(repeat, dim=0)
    return torch.stack([scales, scales * (8 - zeros)], dim=-1).contiguous()
