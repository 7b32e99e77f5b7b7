"""The GPTQ checkpoint bit layout, checked against packing done by hand with explicit shifts.

Layout (AutoGPTQ / GPTQModel / transformers / vLLM): ``qweight`` int32 [in/8, out], input rows
8 at a time, row ``8r + j`` in bits ``4j..4j+3``; ``qzeros`` int32 [groups, out/8], the same
along the output dimension; v1 ("gptq") stores each zero point minus one, v2 stores it as is.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from quantize.checkpoint import (
    QuantConfig,
    QuantizedWeight,
    pack_int32,
    read_quant_config,
    unpack_int32,
)
from services.decoder.gptq_linear import GPTQLinear

IN, OUT, GROUP = 64, 16, 32


def hand_pack(values: np.ndarray, bits: int, axis: int) -> np.ndarray:
    """Pack by the documented layout, one value at a time, into signed int32 words."""
    per = 32 // bits
    values = np.moveaxis(values, axis, 0)
    words = np.zeros((values.shape[0] // per, *values.shape[1:]), dtype=np.uint64)
    for row in range(words.shape[0]):
        for j in range(per):
            words[row] |= values[row * per + j].astype(np.uint64) << np.uint64(bits * j)
    return np.moveaxis(words.astype(np.uint32).view(np.int32), 0, axis)


def known_codes(bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Codes [in, out], zero points [groups, out] and scales [groups, out] with every value used."""
    levels = 2**bits
    codes = (np.arange(IN)[:, None] * 7 + np.arange(OUT)[None, :] * 3) % levels
    zeros = (np.arange(IN // GROUP)[:, None] * 5 + np.arange(OUT)[None, :]) % (levels - 1) + 1
    scales = (np.arange(IN // GROUP * OUT).reshape(IN // GROUP, OUT) + 1) / 64
    return codes, zeros, scales


@pytest.mark.parametrize("bits", [4, 8])
def test_loader_unpacks_hand_packed_v1(bits: int) -> None:
    codes, zeros, scales = known_codes(bits)
    qweight = torch.from_numpy(hand_pack(codes, bits, axis=0))
    qzeros = torch.from_numpy(hand_pack(zeros - 1, bits, axis=1))  # v1: minus one
    assert qweight.shape == (IN * bits // 32, OUT) and qweight.dtype == torch.int32
    assert qzeros.shape == (IN // GROUP, OUT * bits // 32)
    g_idx = torch.arange(IN, dtype=torch.int32) // GROUP

    weight = QuantizedWeight.unpack(
        qweight, qzeros, torch.from_numpy(scales).half(), g_idx, bits, "gptq"
    )

    assert torch.equal(weight.q, torch.from_numpy(codes).T.to(torch.uint8))
    assert torch.equal(weight.zeros, torch.from_numpy(zeros).to(torch.int32))
    expected = scales[g_idx.numpy()] * (codes - zeros[g_idx.numpy()])  # [in, out]
    np.testing.assert_allclose(weight.dequantize().T.numpy(), expected, rtol=1e-3)


def test_v2_zeros_are_stored_as_is_and_v1_minus_one() -> None:
    codes, zeros, scales = known_codes(4)
    qweight = torch.from_numpy(hand_pack(codes, 4, axis=0))
    stored = torch.from_numpy(hand_pack(zeros, 4, axis=1))
    args = (qweight, stored, torch.from_numpy(scales).half(), torch.arange(IN) // GROUP, 4)

    v2 = QuantizedWeight.unpack(*args, checkpoint_format="gptq_v2")
    v1 = QuantizedWeight.unpack(*args, checkpoint_format="gptq")

    assert torch.equal(v2.zeros, torch.from_numpy(zeros).to(torch.int32))
    assert torch.equal(v1.zeros, torch.from_numpy((zeros + 1) % 16).to(torch.int32))


def test_writer_packs_by_the_documented_layout() -> None:
    codes, zeros, scales = known_codes(4)
    weight = QuantizedWeight(
        q=torch.from_numpy(codes).T.to(torch.uint8),
        zeros=torch.from_numpy(zeros).to(torch.int32),
        scales=torch.from_numpy(scales).float(),
        g_idx=torch.arange(IN, dtype=torch.int32) // GROUP,
        bits=4,
    )
    packed = weight.pack()
    assert torch.equal(packed["qweight"], torch.from_numpy(hand_pack(codes, 4, axis=0)))
    assert torch.equal(packed["qzeros"], torch.from_numpy(hand_pack(zeros - 1, 4, axis=1)))
    assert packed["scales"].dtype == torch.float16 and packed["g_idx"].dtype == torch.int32


def test_high_nibble_makes_a_negative_int32_and_survives() -> None:
    values = torch.full((8, 1), 15)
    packed = pack_int32(values, 4, dim=0)
    assert packed.item() == -1  # 0xFFFFFFFF as signed int32
    assert torch.equal(unpack_int32(packed, 4, dim=0), values)


def test_packing_rejects_values_that_do_not_fit() -> None:
    with pytest.raises(ValueError, match="4 bits"):
        pack_int32(torch.full((8, 1), 16), 4, dim=0)
    with pytest.raises(ValueError, match="multiple of 8"):
        pack_int32(torch.zeros(6, 1), 4, dim=0)


def test_gptq_linear_computes_with_the_hand_packed_weight() -> None:
    codes, zeros, scales = known_codes(4)
    g_idx = torch.arange(IN, dtype=torch.int32) // GROUP
    layer = GPTQLinear(
        torch.from_numpy(hand_pack(codes, 4, axis=0)),
        torch.from_numpy(hand_pack(zeros - 1, 4, axis=1)),
        torch.from_numpy(scales).half(),
        g_idx,
        bits=4,
    )
    weight = scales[g_idx.numpy()] * (codes - zeros[g_idx.numpy()])  # [in, out]
    assert layer.kernel == "int4-cpu"
    x = torch.randn(3, IN)
    expected = x @ torch.from_numpy(weight).float()
    assert (layer(x) - expected).norm() / expected.norm() < 1e-2  # bf16 activations


def test_unpack_rejects_inconsistent_tensors() -> None:
    codes, zeros, _scales = known_codes(4)
    qweight = torch.from_numpy(hand_pack(codes, 4, axis=0))
    qzeros = torch.from_numpy(hand_pack(zeros, 4, axis=1))
    with pytest.raises(ValueError, match="g_idx"):
        QuantizedWeight.unpack(qweight, qzeros, torch.ones(2, OUT), torch.full((IN,), 5), 4)
    with pytest.raises(ValueError, match="disagree"):
        QuantizedWeight.unpack(qweight, qzeros, torch.ones(3, OUT), torch.zeros(IN), 4)


def test_quant_config_is_read_from_either_file(tmp_path: Path) -> None:
    config = QuantConfig(bits=4, group_size=128, desc_act=True)
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "glm4", "quantization_config": config.to_json()})
    )
    assert read_quant_config(tmp_path) == config  # transformers style: config.json only

    data = config.to_json() | {"checkpoint_format": "gptq_v2", "bits": 8}
    (tmp_path / "quantize_config.json").write_text(json.dumps(data))
    read = read_quant_config(tmp_path)
    assert (read.bits, read.checkpoint_format) == (8, "gptq_v2")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"quant_method": "awq"}, "not a GPTQ"),
        ({"bits": 3}, "3-bit"),
        ({"checkpoint_format": "marlin"}, "checkpoint_format"),
    ],
)
def test_quant_config_rejects_what_we_cannot_load(change: dict[str, object], message: str) -> None:
    data = QuantConfig(bits=4, group_size=128, desc_act=False).to_json() | change
    with pytest.raises(ValueError, match=message):
        QuantConfig.from_json(data)


def test_written_config_has_the_fields_gptq_loaders_read() -> None:
    data = QuantConfig(bits=4, group_size=128, desc_act=False).to_json()
    assert data["quant_method"] == "gptq" and data["checkpoint_format"] == "gptq"
    assert data["sym"] is False and data["desc_act"] is False
    assert (data["bits"], data["group_size"]) == (4, 128)
