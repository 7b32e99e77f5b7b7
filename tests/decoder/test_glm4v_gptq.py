"""GPTQ checkpoints of GLM-4.1V as GPTQModel writes them: the text model under its own names
(``model.language_model.*``), GLM's fused ``mlp.gate_up_proj`` split into ``gate_proj`` and
``up_proj``, v1 or v2 zero points. The decoder loads them into its fused layers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from bundle.checkpoint import read_tensors
from bundle.hf_import import import_checkpoint
from bundle.layout import GLM4, Bundle
from quantize.checkpoint import (
    QuantConfig,
    QuantizedWeight,
    pack_int32,
    unpack_int32,
    write_checkpoint,
)
from quantize.rtn import rtn_quantize
from services.cli import main
from services.decoder.gptq_linear import GPTQLinear
from services.decoder.model import Glm4ForCausalLM as ServingGlm4
from services.decoder.quant import FUSED, JoinedLinear, apply_quantization, decoder_linears
from tests.decoder.test_model_parity import new_cache, prefill

CPU = torch.device("cpu")
TEXT = "model.language_model."


def quantize_as_gptqmodel(weight: torch.Tensor, act_order: bool, seed: int) -> QuantizedWeight:
    q = rtn_quantize(weight, bits=4, group_size=32)
    if not act_order:
        return q
    perm = torch.randperm(weight.shape[1], generator=torch.Generator().manual_seed(seed))
    return QuantizedWeight(q.q, q.zeros, q.scales, q.g_idx[perm], 4)  # each its own order


def write_split_checkpoint(source: Path, dest: Path, fmt: str, act_order: bool) -> dict:
    """The text model of ``source`` quantized in GPTQModel's naming; returns the quantized
    weights by name."""
    unquantized = {TEXT + k: v for k, v in read_tensors(source, TEXT).items()}
    unquantized |= {f"lm_head.{k}": v for k, v in read_tensors(source, "lm_head.").items()}
    quantized: dict[str, QuantizedWeight] = {}
    for name in [n for n in unquantized if ".layers." in n and n.endswith("_proj.weight")]:
        module, weight = name.removesuffix(".weight"), unquantized.pop(name)
        if module.endswith("gate_up_proj"):
            base = module.removesuffix("gate_up_proj")
            for half, rows in zip(("gate_proj", "up_proj"), weight.chunk(2), strict=True):
                quantized[base + half] = quantize_as_gptqmodel(rows, act_order, len(quantized))
        else:
            quantized[module] = quantize_as_gptqmodel(weight, act_order, len(quantized))
    write_checkpoint(dest, source, unquantized, quantized, QuantConfig(4, 32, desc_act=act_order))
    if fmt == "gptq_v2":  # zero points as they are, not minus one
        tensors = load_file(dest / "model.safetensors")
        for name in [n for n in tensors if n.endswith(".qzeros")]:
            tensors[name] = pack_int32((unpack_int32(tensors[name], 4, 1) + 1) & 15, 4, dim=1)
        save_file(tensors, str(dest / "model.safetensors"))
        for file in ("config.json", "quantize_config.json"):
            data = json.loads((dest / file).read_text())
            (data.get("quantization_config") or data)["checkpoint_format"] = fmt
            (dest / file).write_text(json.dumps(data))
    return quantized


def simulated(source: Path, quantized: dict[str, QuantizedWeight]) -> ServingGlm4:
    """The FP model with each Linear replaced by its dequantized GPTQ weight."""
    model = ServingGlm4.from_pretrained(source, torch.float32, CPU)
    weights = {name.replace(TEXT, "model."): w.dequantize() for name, w in quantized.items()}
    for name, parameter in model.named_parameters():
        module = name.removesuffix(".weight")
        fused = next((f for f in FUSED if module.endswith(f)), None)
        if fused is not None:  # gate_up_proj, qkv_proj: the checkpoint's parts in order
            base = module.removesuffix(fused)
            value = torch.cat([weights[base + part] for part in FUSED[fused]])
        elif module in weights:
            value = weights[module]
        else:
            continue
        with torch.no_grad():
            parameter.copy_(value)
    return model


def logits(model: ServingGlm4, ids: torch.Tensor) -> torch.Tensor:
    positions = torch.arange(len(ids)).expand(3, -1)
    return prefill(model, new_cache(model, 1), [(0, 0, ids)], positions)


@pytest.mark.parametrize(
    ("fmt", "act_order"), [("gptq", False), ("gptq_v2", False), ("gptq_v2", True)]
)
def test_a_gptqmodel_checkpoint_of_glm4v_loads_into_the_fused_layers(
    glm4v_checkpoint: Path, tmp_path: Path, fmt: str, act_order: bool
) -> None:
    quantized = write_split_checkpoint(glm4v_checkpoint, tmp_path / "gptq", fmt, act_order)
    parts = {"decoder": str(glm4v_checkpoint), "decoder_gptq": str(tmp_path / "gptq")}
    bundle = Bundle(tmp_path, "tiny", parts, architecture=GLM4)
    model = ServingGlm4.from_pretrained(glm4v_checkpoint, torch.float32, CPU)

    assert apply_quantization(model, "gptq", bundle, CPU) == "gptq-4bit"

    # one fused int4 Linear when the parts share an input order; one per part otherwise
    for fused in ("mlp.gate_up_proj", "self_attn.qkv_proj"):
        module = model.get_submodule(f"model.layers.0.{fused}")
        assert isinstance(module, JoinedLinear if act_order else GPTQLinear)
    ids = torch.randint(3, 100, (12,), generator=torch.Generator().manual_seed(0))
    ours, expected = logits(model, ids), logits(simulated(glm4v_checkpoint, quantized), ids)
    # the int4 kernels take bf16 activations, the reference runs fp32 dequantized weights: ~1%
    # apart on this model's large (std 0.1) weights; gate and up swapped would be ~80% apart
    assert (ours - expected).norm() / expected.norm() < 3e-2


def test_lm_head_asked_for_with_a_vocabulary_that_does_not_pack_is_refused_up_front(
    glm4v_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = Path(shutil.copytree(glm4v_checkpoint, tmp_path / "GLM-4.1V"))
    bundle = import_checkpoint(checkpoint)
    assert main(["quantize", str(checkpoint), "--lm-head"]) == 2
    assert "a vocabulary of 4020 is not a multiple of 8" in capsys.readouterr().err
    assert not bundle.decoder_gptq.exists()


def test_autoglm_quantize_writes_the_language_model_of_an_imported_glm4v_bundle(
    glm4v_checkpoint: Path, tmp_path: Path
) -> None:
    checkpoint = Path(shutil.copytree(glm4v_checkpoint, tmp_path / "GLM-4.1V"))
    bundle = import_checkpoint(checkpoint)
    assert main(["quantize", str(checkpoint), "--samples", "4", "--seq-len", "32"]) == 0

    names = set(load_file(bundle.decoder_gptq / "model.safetensors"))
    assert "model.language_model.layers.1.mlp.gate_up_proj.qweight" in names  # its own names
    assert "model.language_model.layers.1.post_mlp_layernorm.weight" in names
    assert "lm_head.weight" in names  # its vocabulary (4,020) does not pack in 4 bits: kept
    assert not any(n.startswith("model.visual.") for n in names)  # the tower is vision's part

    model = ServingGlm4.from_pretrained(bundle.decoder, torch.float32, CPU)
    fp = ServingGlm4.from_pretrained(bundle.decoder, torch.float32, CPU)
    assert apply_quantization(model, "gptq", bundle, CPU) == "gptq-4bit"
    assert not decoder_linears(model)  # every Linear of the layers is a GPTQ one now
    ids = torch.randint(3, 100, (12,), generator=torch.Generator().manual_seed(1))
    quant, expected = logits(model, ids).log_softmax(-1), logits(fp, ids).log_softmax(-1)
    kl = torch.nn.functional.kl_div(quant, expected, log_target=True, reduction="none")
    assert kl.sum(-1).mean() < 0.1  # close to FP: a small shift of the next-token distributions
