"""services.encoder.int8: which layers become LLM.int8(), and how the int8 layers behave on CPU."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from services.encoder.int8 import Int8Linear, quantize_linears, weight_bytes

CPU = torch.device("cpu")


class Block(nn.Module):
    """A conv front-end, a norm, an MLP and attention: the parts of an encoder tower."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(4, 64, kernel_size=3)
        self.norm = nn.LayerNorm(64)
        self.mlp = nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 64))
        self.attention = nn.MultiheadAttention(64, num_heads=4, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.conv(x).transpose(1, 2))
        h = h + self.mlp(h)
        return h + self.attention(h, h, h, need_weights=False)[0]


@pytest.fixture
def block() -> Block:
    torch.manual_seed(0)
    return Block().train()


def test_only_plain_linears_become_int8_and_the_model_is_left_in_eval(block: Block) -> None:
    assert quantize_linears(block, CPU) == 2
    assert all(
        isinstance(layer, Int8Linear) for layer in block.mlp if not isinstance(layer, nn.GELU)
    )
    assert all(
        layer.weight.dtype == torch.int8
        for layer in block.modules()
        if isinstance(layer, Int8Linear)
    )
    # Full precision stays full precision: the conv front-end, the norm, and the attention's
    # out_proj (a Linear subclass whose weight nn.MultiheadAttention reads directly).
    assert block.conv.weight.dtype == block.norm.weight.dtype == torch.float32
    assert type(block.attention.out_proj) is not Int8Linear
    assert block.attention.out_proj.weight.dtype == torch.float32
    assert not any(module.training for module in block.modules())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_int8_layers_answer_in_the_input_dtype_without_cast_warnings(
    dtype: torch.dtype, caplog: pytest.LogCaptureFixture
) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(64, 32)
    layer = Int8Linear.from_linear(linear, threshold=6.0).to(CPU).eval()
    x = torch.randn(2, 5, 64)
    with caplog.at_level(logging.WARNING), torch.inference_mode():
        out = layer(x.to(dtype))
        expected = linear(x)
    assert out.dtype == dtype and out.shape == (2, 5, 32)
    assert torch.cosine_similarity(out.float(), expected, dim=-1).min() > 0.999
    assert not [r for r in caplog.records if "will be cast" in r.getMessage()]


def test_outliers_above_the_threshold_are_multiplied_in_fp16() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(64, 32)
    x = torch.randn(8, 64)
    x[:, 3] = 40.0  # one outlier column, as trained transformers have
    errors = {}
    for threshold in (6.0, 0.0):
        layer = Int8Linear.from_linear(linear, threshold).to(CPU).eval()
        assert layer.state.threshold == threshold
        with torch.inference_mode():
            errors[threshold] = (layer(x) - linear(x)).abs().max().item()
    assert errors[6.0] < errors[0.0] / 2


def test_weights_shrink_to_about_a_quarter(block: Block) -> None:
    mlp_fp32 = weight_bytes(block.mlp)
    quantize_linears(block, CPU)
    # int8 weights plus one fp32 scale per row and fp16 biases: a little over 1/4.
    assert weight_bytes(block.mlp) < 0.3 * mlp_fp32


def test_the_quantized_block_still_tracks_fp32(block: Block) -> None:
    x = torch.randn(3, 4, 20)
    block.eval()
    with torch.inference_mode():
        expected = block(x)
    quantize_linears(block, CPU)
    with torch.inference_mode():
        out = block(x)
    assert out.dtype == torch.float32
    assert torch.cosine_similarity(out, expected, dim=-1).mean() > 0.999


def test_bad_arguments_are_refused(block: Block) -> None:
    with pytest.raises(ValueError, match="threshold"):
        quantize_linears(block, CPU, threshold=-1.0)
    with pytest.raises(ValueError, match="on the CPU"):
        quantize_linears(block.to("meta"), CPU)
