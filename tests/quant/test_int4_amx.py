"""The fused int4 GEMM behind GPTQLinear's batched CPU calls (services/decoder/int4_amx.py):
the same result as unpacking the two bf16 halves (which carry the exact weight) and running
oneDNN on them, for every group size and tile shape; ``use_fused_gemm``, which moves the
layers to it at load; and the unpacking left in place where the kernel cannot be built."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import torch
from torch.utils import cpp_extension

from services.decoder import int4_amx, int4_dequant
from services.decoder.gptq_linear import GPTQLinear, use_fused_gemm
from services.decoder.int4_dequant import BLOCK_N, can_dequantize, dequantized_mm
from tests.quant.test_gptq_kernels import assert_bf16_close, layer, quantized, reference
from tests.quant.test_int4_unpack import layers

pytestmark = pytest.mark.skipif(
    not (can_dequantize(BLOCK_N, torch.device("cpu")) and int4_amx.available()),
    reason="needs AMX and a C++ compiler",
)


def kernel_weight(n: int, k: int, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random codes in the int4 kernel's packing and its bf16 (scale, zero) per group."""
    generator = torch.Generator().manual_seed(n + k + group)
    codes = torch.randint(0, 16, (n, k), dtype=torch.int32, generator=generator)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
    scales = torch.rand(k // group, n, generator=generator) / 16 + 1e-3
    zeros = torch.randn(k // group, n, generator=generator) / 8
    return packed, torch.stack([scales, zeros], dim=-1).to(torch.bfloat16)


@pytest.mark.parametrize(
    ("n", "k", "group"), [(64, 128, 32), (192, 384, 128), (128, 256, 64), (320, 512, 256)]
)
@pytest.mark.parametrize("rows", [1, 7, 31, 32, 33, 100])
def test_the_fused_kernel_equals_the_unpacked_halves_gemm(
    n: int, k: int, group: int, rows: int
) -> None:
    """The fused kernel sums exact integer products per group and scales them in fp32; the
    unpacked path multiplies by two bf16 halves that carry the same weights to ~2^-17. Both
    round once to bf16 at the end, so they differ by at most one bf16 step, and rarely."""
    packed, scales_and_zeros = kernel_weight(n, k, group)
    x = torch.randn(rows, k, generator=torch.Generator().manual_seed(rows)).to(torch.bfloat16)
    fused = int4_amx.int4_mm(x, packed, scales_and_zeros)
    unpacked = dequantized_mm(x, packed, scales_and_zeros, group)
    assert fused.shape == (rows, n) and fused.dtype == torch.bfloat16
    step = unpacked.float().abs() * 2**-7 + 1e-30
    assert ((fused.float() - unpacked.float()).abs() <= step).all()
    assert (fused != unpacked).float().mean() < 0.02


def test_the_fused_kernel_refuses_what_it_cannot_read() -> None:
    packed, scales_and_zeros = kernel_weight(64, 128, 32)
    with pytest.raises(RuntimeError, match="bf16"):
        int4_amx.int4_mm(torch.randn(4, 128), packed, scales_and_zeros)
    with pytest.raises(RuntimeError, match="scales_and_zeros"):
        int4_amx.int4_mm(torch.randn(4, 128).bfloat16(), packed, scales_and_zeros.float())


def test_use_fused_gemm_moves_the_unpacking_layers_at_load() -> None:
    model = torch.nn.Sequential(
        layer(quantized(128, 256)),
        layer(quantized(192, 256, group_size=64), dequant_rows=17),
        layer(quantized(64, 256), dequant_rows=None),
    )
    table, given, never = model
    assert use_fused_gemm(model) == 2
    assert table.fused and given.fused and not never.fused
    assert table.dequant_rows == int4_amx.FUSED_ROWS  # the table's row for the fused kernel
    assert given.dequant_rows == 17 and never.dequant_rows is None
    weights = quantized(128, 256), quantized(192, 256, group_size=64)
    for module, weight in zip((table, given), weights, strict=True):
        assert module.dequant_rows is not None
        x = torch.randn(module.dequant_rows + 5, 256)
        assert_bf16_close(module(x), reference(weight, x))


@pytest.fixture
def unbuildable(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    def no_ninja(**_: object) -> None:
        raise RuntimeError("Ninja is required to load C++ extensions")

    monkeypatch.setattr(cpp_extension, "load", no_ninja)
    int4_amx.available.cache_clear()
    yield
    int4_amx.available.cache_clear()  # the real build, cached on disk, for the other tests


def test_where_the_kernel_cannot_be_built_the_unpacking_stays(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, unbuildable: None
) -> None:
    model = layers(monkeypatch)
    with caplog.at_level(logging.WARNING):
        assert use_fused_gemm(model) == 0
    assert "Ninja is required" in caplog.text
    assert not any(isinstance(m, GPTQLinear) and m.fused for m in model)
    assert [m.dequant_rows for m in model] == [int4_dequant.AMX_ROWS, 17, None]
