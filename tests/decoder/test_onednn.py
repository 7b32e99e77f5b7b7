"""Linear weights repacked for oneDNN: same maths as nn.Linear, only plain Linears swapped, and
the CPU service uses them unless told not to. (Parity with transformers and the engine tests
run on a repacked model too: see the ``tiny_model`` fixture.)"""

from __future__ import annotations

import bitsandbytes as bnb
import pytest
import torch
from torch import nn

from services.decoder.config import DecoderConfig
from services.decoder.gptq_linear import GPTQLinear
from services.decoder.loader import load_decoder
from services.decoder.onednn import OneDnnLinear, can_prepack, prepack_linears


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 96), (5, 96), (64, 96), (2, 3, 96)])
def test_a_repacked_linear_computes_what_nn_linear_does(shape: tuple[int, ...], bias: bool) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(96, 200, bias=bias)
    x = torch.randn(shape)
    with torch.inference_mode():
        expected = linear(x)
        got = OneDnnLinear(linear)(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_bfloat16_weights_repack_too_where_the_cpu_has_bfloat16() -> None:
    linear = nn.Linear(64, 128).to(torch.bfloat16)
    if not can_prepack(linear):
        pytest.skip("this CPU has no native bfloat16 in oneDNN")
    x = torch.randn(8, 64, dtype=torch.bfloat16)
    with torch.inference_mode():
        got = OneDnnLinear(linear)(x)
        expected = linear(x)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), expected.float(), atol=2e-2, rtol=2e-2)


def test_only_plain_linears_are_swapped_quantized_layers_keep_their_kernels() -> None:
    model = nn.Sequential(
        nn.Linear(64, 64),
        bnb.nn.Linear4bit(64, 64),  # an nn.Linear subclass with its own kernel
        nn.Sequential(nn.Linear(64, 64, bias=False)),
        nn.Linear(64, 64).half(),  # no native fp16 GEMM in oneDNN on this CPU
    )
    assert prepack_linears(model) == 2
    kinds = [type(m) for m in (model[0], model[1], model[2][0], model[3])]
    assert kinds == [OneDnnLinear, bnb.nn.Linear4bit, OneDnnLinear, nn.Linear]


@pytest.mark.parametrize(
    ("prepack", "quant"),
    # GPTQ needs the quantized default bundle, which the stack tier pays for.
    [(True, "none"), (False, "none"), pytest.param(True, "gptq", marks=pytest.mark.stack)],
)
def test_the_cpu_service_repacks_unless_told_not_to(
    request: pytest.FixtureRequest, prepack: bool, quant: str
) -> None:
    bundle = request.getfixturevalue("quantized_bundle_dir" if quant == "gptq" else "bundle_dir")
    config = DecoderConfig(bundle=bundle, device="cpu", quantization=quant, cpu_prepack=prepack)
    model = load_decoder(config).engine.model
    # `autoglm quantize` puts the lm_head in 4 bits too; what stays in floating point is repacked
    expected = GPTQLinear if quant == "gptq" else OneDnnLinear if prepack else nn.Linear
    assert type(model.lm_head) is expected
    assert type(model.model.layers[0].self_attn.qkv_proj) is expected
