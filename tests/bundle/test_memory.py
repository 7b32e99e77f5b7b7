"""`autoglm bundle memory`: each service's weights from the checkpoint's config, checked against
the tensors the tiny GLM-4.1V checkpoint actually holds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors import safe_open
from torch import nn

from bundle.hf_import import import_checkpoint, read_config
from bundle.memory import FP16, estimate, gptq_bytes, int8_bytes
from services.cli import main as autoglm


def stored_elements(checkpoint: Path) -> dict[str, int]:
    """Element count per service, from the safetensors headers (what is on disk)."""
    counts = {"vision": 0, "gateway": 0, "decoder": 0}
    with safe_open(checkpoint / "model.safetensors", "pt") as f:
        for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
            elements = f.get_slice(name).get_shape()
            size = 1
            for dim in elements:
                size *= dim
            if name.startswith(("model.visual.downsample.", "model.visual.merger.")):
                counts["gateway"] += size
            elif name.startswith("model.visual."):
                counts["vision"] += size
            else:
                counts["decoder"] += size
    return counts


def test_each_services_parameters_are_the_checkpoints_tensors(glm4v_checkpoint: Path) -> None:
    config, _ = read_config(glm4v_checkpoint)
    result = estimate(config)
    stored = stored_elements(glm4v_checkpoint)
    assert {p.service: p.parameters for p in result.parts} == stored
    for part in result.parts:
        assert part.fp16_bytes == FP16 * part.parameters
    # The projector is never quantized; the tower (int8) and the decoder (4-bit) shrink.
    assert result.part("gateway").served_bytes == result.part("gateway").fp16_bytes
    assert result.part("vision").served_bytes < result.part("vision").fp16_bytes
    assert result.part("decoder").served_bytes < result.part("decoder").fp16_bytes


def test_kv_cache_per_token_is_keys_and_values_of_every_layer(glm4v_checkpoint: Path) -> None:
    text = json.loads((glm4v_checkpoint / "config.json").read_text())["text_config"]
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    layers, kv_heads = text["num_hidden_layers"], text["num_key_value_heads"]
    config, _ = read_config(glm4v_checkpoint)
    assert estimate(config).kv_bytes_per_token == 2 * layers * kv_heads * head_dim * FP16


def test_quantized_layer_sizes() -> None:
    layer = nn.Linear(4096, 512, bias=True, device="meta")
    # int4 weights, an fp16 scale + 4-bit zero per 128 inputs and output, int32 g_idx, fp16 bias
    assert gptq_bytes(layer) == 4096 * 512 // 2 + 32 * 512 * 2.5 + 4096 * 4 + 512 * 2
    # int8 weights, an fp32 scale per output row, fp16 bias
    assert int8_bytes(layer) == 4096 * 512 + 512 * 4 + 512 * 2


def test_the_command_reads_a_bundle(
    glm4v_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(glm4v_checkpoint, bundle / "checkpoint")  # the tiny one: ~7 MB
    import_checkpoint(bundle / "checkpoint", bundle)
    assert autoglm(["bundle", "memory", str(bundle), "--context-tokens", "1024"]) == 0
    out = capsys.readouterr().out
    for service in ("vision", "gateway", "decoder"):
        assert service in out
    assert "GPTQ 4-bit" in out and "LLM.int8()" in out and "for 1024 tokens" in out
