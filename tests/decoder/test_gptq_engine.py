"""The engine on GPTQ layers whose calls take both CPU paths (the int4 kernel at few rows, from
``dequant_rows`` on the fused int4 GEMM or the unpacked bf16 one): batching still does not
change greedy output."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from quantize.rtn import rtn_quantize
from services.decoder import int4_amx
from services.decoder.config import DecoderConfig
from services.decoder.gptq_linear import GPTQLinear, unpacking_layers, use_fused_gemm
from services.decoder.int4_dequant import AMX_ROWS, can_dequantize, table_rows
from services.decoder.loader import load_decoder
from services.decoder.model import Glm4ForCausalLM as ServingGlm4
from services.decoder.quant import decoder_linears
from tests.decoder.engines import make_engine, request, run_all, tokens


def gptq_model(checkpoint: Path, dequant_rows: int | None) -> ServingGlm4:
    """The tiny model with every decoder Linear and the lm_head as 4-bit GPTQLinear."""
    model = ServingGlm4.from_pretrained(checkpoint, torch.float32, torch.device("cpu"))
    linears = {**decoder_linears(model), "lm_head": model.lm_head}
    for name, linear in linears.items():
        packed = rtn_quantize(linear.weight.detach(), 4, 32).pack()
        bias = None if linear.bias is None else linear.bias.detach()
        quantized = GPTQLinear(
            packed["qweight"], packed["qzeros"], packed["scales"], packed["g_idx"], bias,
            dequant_rows=dequant_rows,
        )  # fmt: skip
        model.set_submodule(name, quantized)
    return model


@pytest.mark.skipif(not can_dequantize(64, torch.device("cpu")), reason="no blocked int4 layout")
@pytest.mark.parametrize("fused", [False, True], ids=["unpacked", "fused"])
def test_greedy_alone_equals_greedy_in_a_batch_of_16_across_both_paths(
    tiny_checkpoint: Path, fused: bool
) -> None:
    if fused and not int4_amx.available():
        pytest.skip("the fused kernel needs AMX and a C++ compiler")
    model = gptq_model(tiny_checkpoint, dequant_rows=8)
    unpacked = unpacking_layers(model)
    assert len(unpacked) >= 3 * model.config.num_hidden_layers + 1  # q, o, gate_up, down, lm_head
    if fused:
        assert use_fused_gemm(model) == len(unpacked)
    requests = [request(f"r{i}", 3 + 7 * i, max_tokens=12, seed=i) for i in range(16)]
    batched = make_engine(model, chunk=48)  # prefill chunks and 16-row decode: unpacked path
    for r in requests:
        batched.add(r)
    together = run_all(batched)
    for r in requests:  # one row per decode step: the int4 kernel
        alone = make_engine(model)
        alone.add(r)
        assert tokens(run_all(alone)[r.request_id]) == tokens(together[r.request_id]), r.request_id


@pytest.mark.stack  # the GPTQ-quantized default bundle
@pytest.mark.skipif(table_rows() is None, reason="no AMX: the int4 kernel serves every call")
@pytest.mark.parametrize("cpu_compile", [True, False])
def test_the_cpu_service_builds_the_fused_gemm_unless_told_not_to(
    quantized_bundle_dir: Path, cpu_compile: bool
) -> None:
    config = DecoderConfig(bundle=quantized_bundle_dir, device="cpu", cpu_compile=cpu_compile)
    model = load_decoder(config).engine.model
    unpacking = unpacking_layers(model)
    assert unpacking
    fused = cpu_compile and int4_amx.available()
    assert all(m.fused == fused for m in unpacking)
    assert {m.dequant_rows for m in unpacking} == {int4_amx.FUSED_ROWS if fused else AMX_ROWS}
