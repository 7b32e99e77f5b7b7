"""`autoglm quantize` end to end on a tiny bundle, then the checkpoint loaded back through
``apply_quantization``, the way the decoder service loads it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import Glm4Config, Glm4ForCausalLM

from bundle.build import build_tokenizer
from bundle.layout import Bundle
from quantize.checkpoint import QUANT_PARTS, QuantizedWeight, pack_int32, read_quant_config
from quantize.rtn import rtn_quantize
from services.cli import main
from services.decoder.gptq_linear import GPTQLinear
from services.decoder.quant import apply_quantization, decoder_linears

CPU = torch.device("cpu")
LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_up_proj", "mlp.down_proj")  # fmt: skip
FAST = ["--samples", "8", "--seq-len", "64"]


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    root = tmp_path_factory.mktemp("tiny")
    tokenizer = build_tokenizer()
    config = Glm4Config(  # the vocabulary padded to a multiple of 64, as real checkpoints do
        vocab_size=-(-len(tokenizer) // 64) * 64, hidden_size=128, num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, intermediate_size=256, attention_bias=True,
        tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    Glm4ForCausalLM(config).save_pretrained(root / "decoder")
    tokenizer.save_pretrained(root / "decoder")
    parts = {part: part for part in ("decoder", "vision", "audio", "fusion")}
    Bundle(root=root, served_model_name="tiny", parts=parts).save()
    return Bundle.load(root)


def fp_model(bundle: Bundle) -> Glm4ForCausalLM:
    return Glm4ForCausalLM.from_pretrained(bundle.decoder).eval()


def logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def assert_same_up_to_bf16(logits: torch.Tensor, expected: torch.Tensor) -> None:
    """The int4 kernels take bf16 activations; the reference runs fp32 dequantized weights."""
    assert (logits - expected).norm() / expected.norm() < 1e-2


def test_quantize_writes_a_gptq_checkpoint_beside_the_fp_one(tiny_bundle: Bundle) -> None:
    assert main(["quantize", str(tiny_bundle.root), "--act-order", *FAST]) == 0

    folder = tiny_bundle.decoder_gptq
    assert (
        folder.parent == tiny_bundle.root and (tiny_bundle.decoder / "model.safetensors").is_file()
    )
    for name in ("tokenizer.json", "tokenizer_config.json", "quantize_config.json"):
        assert (folder / name).is_file()
    config = json.loads((folder / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "gptq"
    assert config["quantization_config"]["desc_act"] is True
    tensors = load_file(folder / "model.safetensors")
    for layer in range(2):
        for linear in LINEARS:
            prefix = f"model.layers.{layer}.{linear}"
            assert f"{prefix}.weight" not in tensors
            assert tensors[f"{prefix}.qweight"].dtype == torch.int32
            assert tensors[f"{prefix}.scales"].dtype == torch.float16
            assert (
                tensors[f"{prefix}.g_idx"].shape[0] * 4
                == tensors[f"{prefix}.qweight"].shape[0] * 32
            )
        assert f"model.layers.{layer}.self_attn.q_proj.bias" in tensors
    assert "lm_head.weight" not in tensors  # quantized by default (--no-lm-head keeps it)


def test_quantize_reuses_an_up_to_date_checkpoint(
    tiny_bundle: Bundle, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["quantize", str(tiny_bundle.root), "--act-order", *FAST]) == 0
    stamp = (tiny_bundle.decoder_gptq / "model.safetensors").stat().st_mtime_ns
    assert main(["quantize", str(tiny_bundle.root), "--act-order", *FAST]) == 0
    assert "up to date" in capsys.readouterr().out
    assert (tiny_bundle.decoder_gptq / "model.safetensors").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("flags", [["--act-order"], ["--bits", "8", "--group-size", "-1"]])
def test_loaded_checkpoint_is_close_to_fp(tiny_bundle: Bundle, flags: list[str]) -> None:
    assert main(["quantize", str(tiny_bundle.root), *flags, "--no-lm-head", *FAST]) == 0
    model = fp_model(tiny_bundle)
    label = apply_quantization(model, "gptq", tiny_bundle, CPU)
    assert label == ("gptq-8bit" if "8" in flags else "gptq-4bit")
    modules = decoder_linears(model)
    assert not modules  # every Linear in the layers was replaced
    assert all(
        isinstance(model.get_submodule(f"model.layers.{i}.{n}"), GPTQLinear)
        for i in range(2)
        for n in LINEARS
    )

    ids = torch.randint(0, 4000, (2, 12))
    fp, quant = logits(fp_model(tiny_bundle), ids), logits(model, ids)
    # Close to FP: a small shift of the next-token distributions.
    kl = F.kl_div(quant.log_softmax(-1), fp.log_softmax(-1), log_target=True, reduction="none")
    assert kl.sum(-1).mean() < 0.05
    # And exactly what the checkpoint's weights, dequantized, compute.
    simulated = fp_model(tiny_bundle)
    tensors = load_file(tiny_bundle.decoder_gptq / "model.safetensors")
    bits = 8 if "8" in flags else 4
    for name, linear in decoder_linears(simulated).items():
        qweight, qzeros, scales, g_idx = (tensors[f"{name}.{p}"] for p in QUANT_PARTS)
        with torch.no_grad():
            weight = QuantizedWeight.unpack(qweight, qzeros, scales, g_idx, bits)
            linear.weight.copy_(weight.dequantize())
    assert_same_up_to_bf16(quant, logits(simulated, ids))


def test_no_lm_head_keeps_the_output_projection_in_floating_point(tiny_bundle: Bundle) -> None:
    assert main(["quantize", str(tiny_bundle.root), "--no-lm-head", *FAST]) == 0
    assert not read_quant_config(tiny_bundle.decoder_gptq).lm_head
    tensors = load_file(tiny_bundle.decoder_gptq / "model.safetensors")
    assert tensors["lm_head.weight"].dtype == torch.float32 and "lm_head.qweight" not in tensors
    model = fp_model(tiny_bundle)
    assert apply_quantization(model, "gptq", tiny_bundle, CPU) == "gptq-4bit"
    assert isinstance(model.lm_head, torch.nn.Linear)


def test_the_output_projection_is_quantized_by_default(tiny_bundle: Bundle) -> None:
    assert main(["quantize", str(tiny_bundle.root), *FAST]) == 0
    folder = tiny_bundle.decoder_gptq
    assert read_quant_config(folder).lm_head
    tensors = load_file(folder / "model.safetensors")
    assert "lm_head.weight" not in tensors and tensors["lm_head.qweight"].dtype == torch.int32
    assert tensors["model.embed_tokens.weight"].dtype == torch.float32  # a lookup: kept

    model = fp_model(tiny_bundle)
    assert apply_quantization(model, "gptq", tiny_bundle, CPU) == "gptq-4bit+lm_head"
    assert isinstance(model.lm_head, GPTQLinear)
    ids = torch.randint(0, 4000, (2, 12))
    fp, quant = logits(fp_model(tiny_bundle), ids), logits(model, ids)
    kl = F.kl_div(quant.log_softmax(-1), fp.log_softmax(-1), log_target=True, reduction="none")
    assert kl.sum(-1).mean() < 0.05
    simulated = fp_model(tiny_bundle)
    for name, linear in {**decoder_linears(simulated), "lm_head": simulated.lm_head}.items():
        qweight, qzeros, scales, g_idx = (tensors[f"{name}.{p}"] for p in QUANT_PARTS)
        weight = QuantizedWeight.unpack(qweight, qzeros, scales, g_idx, 4)
        with torch.no_grad():
            linear.weight.copy_(weight.dequantize())
    assert_same_up_to_bf16(quant, logits(simulated, ids))


def test_gptq_without_a_checkpoint_says_how_to_make_one(
    tmp_path: Path, tiny_bundle: Bundle
) -> None:
    parts = tiny_bundle.parts | {"decoder_gptq": str(tmp_path / "none")}
    bundle = Bundle(root=tiny_bundle.root, served_model_name="tiny", parts=parts)
    with pytest.raises(FileNotFoundError, match="autoglm quantize"):
        apply_quantization(fp_model(tiny_bundle), "gptq", bundle, CPU)


def test_loads_a_gptq_v2_act_order_checkpoint_written_elsewhere(
    tmp_path: Path, tiny_bundle: Bundle
) -> None:
    """As GPTQModel writes it: v2 zeros, act-order g_idx, config only in config.json."""
    model = fp_model(tiny_bundle)
    tensors = {k: v for k, v in model.state_dict().items()}
    simulated = fp_model(tiny_bundle)
    generator = torch.Generator().manual_seed(1)
    for name, linear in decoder_linears(model).items():
        weight = rtn_quantize(linear.weight, bits=4, group_size=32)
        perm = torch.randperm(linear.in_features, generator=generator)
        shuffled = QuantizedWeight(weight.q, weight.zeros, weight.scales, weight.g_idx[perm], 4)
        del tensors[f"{name}.weight"]
        tensors[f"{name}.qweight"] = pack_int32(shuffled.q.T, 4, dim=0)
        tensors[f"{name}.qzeros"] = pack_int32(shuffled.zeros, 4, dim=1)  # v2: as is
        tensors[f"{name}.scales"] = shuffled.scales.half()
        tensors[f"{name}.g_idx"] = shuffled.g_idx
        with torch.no_grad():
            simulated.get_parameter(f"{name}.weight").copy_(shuffled.dequantize())
    folder = tmp_path / "external"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "model.safetensors"))
    quant = {"bits": 4, "group_size": 32, "desc_act": True, "sym": False,
             "quant_method": "gptq", "checkpoint_format": "gptq_v2"}  # fmt: skip
    (folder / "config.json").write_text(json.dumps({"quantization_config": quant}))
    bundle = Bundle(tiny_bundle.root, "tiny", tiny_bundle.parts | {"decoder_gptq": str(folder)})

    assert apply_quantization(model, "gptq", bundle, CPU) == "gptq-4bit"

    ids = torch.randint(0, 4000, (1, 10))
    assert_same_up_to_bf16(logits(model, ids), logits(simulated, ids))


@pytest.mark.parametrize(("quant", "kind"), [("nf4", "Linear4bit"), ("int8", "Int8Linear")])
def test_bitsandbytes_options_replace_every_linear(
    tiny_bundle: Bundle, quant: str, kind: str
) -> None:
    model = fp_model(tiny_bundle)
    assert apply_quantization(model, quant, tiny_bundle, CPU) == quant
    assert type(model.get_submodule("model.layers.1.mlp.down_proj")).__name__ == kind
    assert isinstance(model.lm_head, torch.nn.Linear)
    ids = torch.randint(0, 4000, (1, 8))
    fp, out = logits(fp_model(tiny_bundle), ids), logits(model, ids)
    assert out.dtype == torch.float32
    kl = F.kl_div(out.log_softmax(-1), fp.log_softmax(-1), log_target=True, reduction="none")
    assert kl.sum(-1).mean() < 0.05


def test_none_leaves_the_model_alone_and_unknown_is_refused(tiny_bundle: Bundle) -> None:
    model = fp_model(tiny_bundle)
    assert apply_quantization(model, "none", tiny_bundle, CPU) == "none"
    assert isinstance(model.get_submodule("model.layers.0.mlp.down_proj"), torch.nn.Linear)
    with pytest.raises(ValueError, match="unknown decoder quantization"):
        apply_quantization(model, "awq", tiny_bundle, CPU)


def test_bad_arguments_are_refused(
    tmp_path: Path, tiny_bundle: Bundle, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["quantize", str(tiny_bundle.root), "--group-size", "0"]) == 2
    assert main(["quantize", str(tiny_bundle.root / "missing")]) == 2
    assert "no model bundle" in capsys.readouterr().err
    short = tmp_path / "short.txt"
    short.write_text("Too short to calibrate on.")
    args = ["quantize", str(tiny_bundle.root), "--calibration", str(short), "--force"]
    assert main(args) == 2
    assert "fewer than --seq-len" in capsys.readouterr().err
