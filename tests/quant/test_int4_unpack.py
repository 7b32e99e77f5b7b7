"""The 4-bit unpacking behind GPTQLinear's large CPU calls where the fused kernel cannot be
built (services/decoder/int4_dequant.py): two bf16 halves that carry the exact fp32 weight;
chunks that split a weight evenly (one GEMM shape per weight); oneDNN's GEMMs built at load
for every row count a step can have."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from services.decoder.gptq_linear import warm_up_unpacking
from services.decoder.int4_dequant import (
    BLOCK_N,
    can_dequantize,
    chunk_blocks,
    padded_rows,
    unpack_halves,
)
from tests.quant.test_gptq_kernels import layer, quantized

pytestmark = pytest.mark.skipif(
    not can_dequantize(BLOCK_N, torch.device("cpu")), reason="no blocked int4 layout"
)


def test_the_two_halves_add_up_to_the_exact_weight() -> None:
    n, k, groups = 3 * BLOCK_N, 256, 2
    generator = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 16, (n, k), dtype=torch.int32, generator=generator)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
    scale = torch.rand(groups, 1, n, generator=generator) / 8
    shift = torch.randn(groups, 1, n, generator=generator)
    halves = unpack_halves(packed.view(n // BLOCK_N, k, BLOCK_N // 2), scale, shift)
    scaled = codes.T.float().view(groups, -1, n) * scale
    exact = (scaled + shift).view(k, n)
    # fp32's own rounding of q * scale + shift (an FMA or not) scales with the terms' size
    size = (scaled.abs() + shift.abs()).view(k, n)
    hi, lo = halves[:k].float(), halves[k:].float()
    assert halves.shape == (2 * k, n) and halves.dtype == torch.bfloat16
    assert ((hi - exact).abs() <= size * 2**-8).all()  # hi alone: bf16's precision
    assert ((hi + lo - exact).abs() <= size * 2**-16).all()  # both: within 2^-16
    assert lo.abs().max() > 0  # the low half is really there


def test_chunks_split_a_weight_evenly_within_the_budget() -> None:
    assert chunk_blocks(88, 1024) == 22  # 5632 outputs: 4 chunks of 1408
    assert chunk_blocks(500, 1024) == 25  # a 32000-token lm_head
    assert chunk_blocks(16, 1024) == 16  # fits whole
    assert chunk_blocks(37, 1024) == 1  # a prime number of blocks: one at a time
    assert chunk_blocks(8, 10**7) == 1  # wider than the budget: still one block
    assert all(b % chunk_blocks(b, 2816) == 0 for b in range(1, 300))


def layers(monkeypatch: pytest.MonkeyPatch) -> nn.Sequential:
    """From the table (AMX here), a given row count, and never."""
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    return nn.Sequential(
        layer(quantized(128, 256)),
        layer(quantized(192, 256, group_size=64), dequant_rows=17),
        layer(quantized(64, 256), dequant_rows=None),
    )


def test_rows_are_padded_to_buckets_coarser_beyond_512() -> None:
    assert [padded_rows(r) for r in (1, 16, 17, 100, 512)] == [16, 16, 32, 112, 512]
    assert [padded_rows(r) for r in (513, 576, 577, 8192)] == [576, 576, 640, 8192]


def test_every_gemm_a_step_runs_was_built_at_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """oneDNN JIT-builds a GEMM per new shape (~25 ms each): rows are padded to buckets, and
    warm_up_unpacking builds every (rows, depth, width) a call up to a step's most rows runs."""
    model = layers(monkeypatch)
    shapes: list[tuple[int, int, int]] = []
    mm = torch.mm

    def recording_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        shapes.append((a.shape[0], *b.shape))
        return mm(a, b)

    monkeypatch.setattr(torch, "mm", recording_mm)
    warm_up_unpacking(model, max_rows=100)
    built = set(shapes)
    assert {rows for rows, _, _ in built} == {32, 48, 64, 80, 96, 112}  # 17 to 100, padded
    shapes.clear()
    for module in model[:2]:
        for rows in (17, 40, 99, 100):
            module(torch.randn(rows, module.in_features))
    ran = {shape for shape in shapes if shape[0] >= 17}
    assert ran and ran <= built
