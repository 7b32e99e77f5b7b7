"""GPTQLinear's paths against the dequantized reference ``x @ W^T + b``: torch's CPU int4 kernel
(with its ``(q - 8) * scale + zero`` form), act-order by input permutation, the unpack-to-bf16
path it hands large calls to, and the dequantizing fallback for what the kernel refuses."""

from __future__ import annotations

import pytest
import torch

from quantize.checkpoint import QuantizedWeight
from quantize.rtn import rtn_quantize
from services.decoder import int4_dequant
from services.decoder.gptq_linear import GPTQLinear, int4_layout
from services.decoder.int4_dequant import can_dequantize


def quantized(out: int, inp: int, bits: int = 4, group_size: int = 128) -> QuantizedWeight:
    torch.manual_seed(out * 1000 + inp)
    return rtn_quantize(torch.randn(out, inp), bits, group_size)


def layer(
    weight: QuantizedWeight, bias: torch.Tensor | None = None, **kwargs: object
) -> GPTQLinear:
    packed = weight.pack()
    return GPTQLinear(
        packed["qweight"],
        packed["qzeros"],
        packed["scales"],
        packed["g_idx"],
        bias,
        bits=weight.bits,
        **kwargs,  # type: ignore[arg-type]
    )


def reference(
    weight: QuantizedWeight, x: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    y = x.float() @ weight.dequantize().T
    return y if bias is None else y + bias


def assert_bf16_close(y: torch.Tensor, ref: torch.Tensor) -> None:
    """The kernels run on bf16 activations: agree to bf16 precision (a wrong bit layout or
    zero-point convention is off by order one)."""
    error = (y.float() - ref).norm() / ref.norm()
    assert error < 1e-2, f"relative error {error:.2e}"


def shuffled_groups(weight: QuantizedWeight) -> QuantizedWeight:
    """The same codes under an act-order g_idx: each input column in a scrambled group."""
    generator = torch.Generator().manual_seed(0)
    perm = torch.randperm(weight.q.shape[1], generator=generator)
    return QuantizedWeight(
        q=weight.q, zeros=weight.zeros, scales=weight.scales, g_idx=weight.g_idx[perm], bits=4
    )


@pytest.mark.parametrize(
    ("out", "inp", "group_size"),
    [(64, 256, 128), (48, 128, 32), (32, 256, 64), (32, 256, -1), (32, 384, -1), (32, 512, 256)],
)
def test_int4_cpu_kernel_matches_dequantized_reference(out: int, inp: int, group_size: int) -> None:
    weight = quantized(out, inp, group_size=group_size)
    bias = torch.randn(out)
    module = layer(weight, bias)
    assert module.kernel == "int4-cpu"
    x = torch.randn(2, 5, inp)
    y = module(x)
    assert y.shape == (2, 5, out) and y.dtype == torch.float32
    assert_bf16_close(y, reference(weight, x, bias))


def test_int4_cpu_kernel_runs_bf16_activations() -> None:
    weight = quantized(64, 256)
    module = layer(weight, dtype=torch.bfloat16)
    x = torch.randn(4, 256, dtype=torch.bfloat16)
    y = module(x)
    assert y.dtype == torch.bfloat16
    assert_bf16_close(y, reference(weight, x))


def test_a_module_cast_after_loading_keeps_its_kernel_scales() -> None:
    """model.to(dtype) casts the bias with the model; the int4 kernels' scales stay in bf16."""
    weight, bias = quantized(64, 256), torch.randn(64)
    module = layer(weight, bias).to(torch.float16)
    assert module.scales_and_zeros.dtype == torch.bfloat16
    assert module.bias is not None and module.bias.dtype == torch.float16
    x = torch.randn(4, 256, dtype=torch.float16)
    y = module(x)
    assert y.dtype == torch.float16
    assert_bf16_close(y, reference(weight, x, bias))


def test_act_order_permutes_inputs_and_keeps_the_kernel() -> None:
    weight = shuffled_groups(quantized(64, 256))
    module = layer(weight)
    assert module.kernel == "int4-cpu" and module.perm is not None
    x = torch.randn(3, 256)
    assert_bf16_close(module(x), reference(weight, x))


def test_monotonic_g_idx_needs_no_permutation() -> None:
    assert layer(quantized(64, 256)).perm is None


@pytest.mark.parametrize(
    ("weight", "why"),
    [
        (quantized(24, 128), "outputs not a multiple of 16"),
        (quantized(32, 128, bits=8), "8-bit"),
        (quantized(32, 96, group_size=48), "group of 48 not a multiple of 32"),
        (quantized(32, 128, group_size=16), "group of 16 too small"),
    ],
)
def test_fallback_dequantizes_what_the_kernel_refuses(weight: QuantizedWeight, why: str) -> None:
    bias = torch.randn(weight.q.shape[0])
    module = layer(weight, bias)
    assert module.kernel == "dequantize", why
    x = torch.randn(2, 3, weight.q.shape[1])
    torch.testing.assert_close(module(x), reference(weight, x, bias), rtol=1e-4, atol=1e-4)


def test_fallback_handles_groups_of_unequal_size() -> None:
    weight = quantized(32, 128, group_size=32)
    g_idx = weight.g_idx.clone()
    g_idx[:8] = 1  # group 0 loses 8 columns to group 1: no contiguous layout exists
    irregular = QuantizedWeight(
        q=weight.q, zeros=weight.zeros, scales=weight.scales, g_idx=g_idx, bits=4
    )
    assert int4_layout(irregular, torch.device("cpu")) is None
    module = layer(irregular)
    x = torch.randn(4, 128)
    torch.testing.assert_close(module(x), reference(irregular, x), rtol=1e-4, atol=1e-4)


def test_kernel_and_fallback_agree() -> None:
    weight = shuffled_groups(quantized(64, 256))
    x = torch.randn(5, 256)
    kernel, fallback = layer(weight), layer(weight, allow_kernel=False)
    assert (kernel.kernel, fallback.kernel) == ("int4-cpu", "dequantize")
    torch.testing.assert_close(fallback(x), reference(weight, x), rtol=1e-4, atol=1e-4)
    assert_bf16_close(kernel(x), fallback(x))


def test_int4_packing_is_smaller_than_the_codes() -> None:
    module = layer(quantized(64, 256))
    assert module.packed.numel() * module.packed.element_size() == 64 * 256 // 2


@pytest.mark.skipif(not can_dequantize(64, torch.device("cpu")), reason="no blocked int4 layout")
@pytest.mark.parametrize(
    ("out", "inp", "group_size", "chunk"),
    [(64, 256, 128, 1 << 22), (192, 128, 32, 128 * 64), (320, 256, -1, 2 * 256 * 64)],
)
def test_dequantized_path_matches_the_reference(
    out: int, inp: int, group_size: int, chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From ``dequant_rows`` rows on, the same packed codes unpacked to bf16 (a chunk of
    64-output blocks at a time) and multiplied by oneDNN give the reference's result."""
    monkeypatch.setattr(int4_dequant, "CHUNK_WEIGHTS", chunk)
    weight = quantized(out, inp, group_size=group_size)
    bias = torch.randn(out)
    module = layer(weight, bias, dequant_rows=4)
    assert module.kernel == "int4-cpu" and module.dequant_rows == 4
    for rows in (3, 4, 37):  # the int4 kernel below the crossover, the unpacked path from it
        x = torch.randn(rows, inp)
        assert_bf16_close(module(x), reference(weight, x, bias))


@pytest.mark.skipif(not can_dequantize(64, torch.device("cpu")), reason="no blocked int4 layout")
def test_dequantized_path_keeps_act_order_and_needs_no_resident_copy() -> None:
    weight = shuffled_groups(quantized(128, 256))
    module = layer(weight, dequant_rows=1)
    before = {name: t.data_ptr() for name, t in module.state_dict().items()}
    x = torch.randn(20, 256)
    assert_bf16_close(module(x), reference(weight, x))
    assert {name: t.data_ptr() for name, t in module.state_dict().items()} == before
    assert module.packed.numel() == 128 * 256 // 2  # the int4 codes are all it keeps


@pytest.mark.skipif(not can_dequantize(64, torch.device("cpu")), reason="no blocked int4 layout")
def test_the_crossover_comes_from_the_table_for_this_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """By default a layer unpacks from the table's rows on (AMX: prefill chunks), never
    without AMX, and a given row count or None (never) overrides the table."""
    for amx, expected in ((True, int4_dequant.AMX_ROWS), (False, None)):
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda amx=amx: amx)
        assert layer(quantized(128, 256)).dequant_rows == expected
    assert layer(quantized(128, 256), dequant_rows=None).dequant_rows is None
    assert layer(quantized(128, 256), dequant_rows=17).dequant_rows == 17


def test_outputs_not_in_blocks_of_64_keep_the_int4_kernel() -> None:
    module = layer(quantized(48, 128, group_size=32), dequant_rows=1)
    assert module.kernel == "int4-cpu" and module.dequant_rows is None
