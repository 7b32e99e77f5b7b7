"""`autoglm bundle memory BUNDLE`: the weight memory each service needs, from the checkpoint's
config alone (no weights read, nothing allocated: transformers builds the model on the meta
device, so the shapes are the checkpoint's own, 9B included).

Each service's part in FP16 beside the form the stack serves it in:
- vision: the tower (``model.visual.*`` up to post_layernorm), its Linear layers in LLM.int8()
  (one byte per weight plus an fp32 scale per output row), everything else FP16;
- gateway: the projector (downsample + merger), always FP16;
- decoder: the text model and lm_head, the decoder layers' Linear weights and the lm_head in
  GPTQ 4-bit (int4 ``qweight``, per group an fp16 scale and a 4-bit zero point, an int32
  ``g_idx`` per input), embeddings, norms and biases FP16 (as `autoglm quantize` writes them by
  default; the lm_head stays FP16 when its vocabulary does not pack in 4 bits);
plus the decoder's KV cache per token (FP16 keys and values of every layer).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch
from torch import nn
from transformers import (
    Glm4Config,
    Glm4ForCausalLM,
    Glm4vConfig,
    Glm4vForConditionalGeneration,
)
from transformers.configuration_utils import PretrainedConfig

from bundle.hf_import import read_config
from bundle.layout import MANIFEST, Bundle
from quantize.checkpoint import packs
from services.decoder.text_config import TextModelConfig

FP16 = 2
GPTQ_GROUP_SIZE = 128


@dataclasses.dataclass(frozen=True)
class PartMemory:
    """One service's share of the checkpoint, in FP16 and as the stack serves it."""

    service: str
    part: str
    quantization: str
    parameters: int
    served_bytes: int  # in the quantization named above

    @property
    def fp16_bytes(self) -> int:
        return self.parameters * FP16


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    parts: tuple[PartMemory, ...]
    kv_bytes_per_token: int  # FP16 keys + values, all layers

    def part(self, service: str) -> PartMemory:
        return next(p for p in self.parts if p.service == service)


def int8_bytes(linear: nn.Linear) -> int:
    """LLM.int8(): int8 weights, an fp32 scale per output row, the bias in FP16."""
    bias = linear.bias.numel() * FP16 if linear.bias is not None else 0
    return linear.weight.numel() + 4 * linear.out_features + bias


def gptq_bytes(linear: nn.Linear, group_size: int = GPTQ_GROUP_SIZE) -> int:
    """GPTQ 4-bit: int4 qweight, per group and output an fp16 scale and a 4-bit zero point,
    an int32 g_idx per input feature, the bias in FP16."""
    groups = -(-linear.in_features // group_size)
    bias = linear.bias.numel() * FP16 if linear.bias is not None else 0
    per_group = groups * linear.out_features * (FP16 + 0.5)
    return int(linear.weight.numel() // 2 + per_group + 4 * linear.in_features + bias)


def _part(
    model: nn.Module,
    service: str,
    part: str,
    owns: tuple[str, ...],
    skip: tuple[str, ...],
    quantized: tuple[tuple[str, ...], str] | None,
) -> PartMemory:
    """The parameters whose names start with one of ``owns`` (and none of ``skip``); with
    ``quantized`` = (module prefixes, "int8"|"gptq"), the Linear layers under them in it."""

    def mine(name: str) -> bool:
        return name.startswith(owns) and not name.startswith(skip)

    params = {name: p for name, p in model.named_parameters() if mine(name)}
    total = sum(p.numel() for p in params.values())
    served = total * FP16
    label = "FP16"
    if quantized is not None:
        prefixes, method = quantized
        label = "LLM.int8()" if method == "int8" else f"GPTQ 4-bit, group {GPTQ_GROUP_SIZE}"
        size = int8_bytes if method == "int8" else gptq_bytes
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear) and name.startswith(prefixes) and mine(name + "."):
                fp = sum(p.numel() for p in module.parameters()) * FP16
                served += size(module) - fp
    return PartMemory(service, part, label, total, served)


def _meta_model(config: PretrainedConfig) -> nn.Module:
    with torch.device("meta"):
        if isinstance(config, Glm4vConfig):
            return Glm4vForConditionalGeneration(config)
        if isinstance(config, Glm4Config):
            return Glm4ForCausalLM(config)
    raise ValueError(f"no memory estimate for a {type(config).__name__}")


# The gateway's fusion stage: the rest of model.visual.* is the vision service's tower.
PROJECTOR = ("model.visual.downsample.", "model.visual.merger.")


def estimate(config: PretrainedConfig) -> MemoryEstimate:
    """Each service's weight memory for a GLM-4.1V (or text-only GLM-4) config."""
    model = _meta_model(config)
    # The decoder's own reading of the text model's shape (its head size rule included).
    text = TextModelConfig.from_hf(config)
    kv = 2 * text.num_hidden_layers * text.num_key_value_heads * text.head_dim * FP16
    head = ("lm_head",) if packs(text.vocab_size, 4) else ()  # as `autoglm quantize` decides
    parts: tuple[PartMemory, ...]
    if isinstance(config, Glm4vConfig):
        language = "model.language_model."
        parts = (
            _part(model, "vision", "tower", ("model.visual.",), PROJECTOR,
                  (("model.visual.blocks.",), "int8")),
            _part(model, "gateway", "projector", PROJECTOR, (), None),
            _part(model, "decoder", "text model + lm_head", (language, "lm_head."), (),
                  ((language + "layers.", *head), "gptq")),
        )  # fmt: skip
    else:
        parts = (
            _part(model, "decoder", "text model + lm_head", ("model.", "lm_head."), (),
                  (("model.layers.", *head), "gptq")),
        )  # fmt: skip
    return MemoryEstimate(parts, kv)


def checkpoint_of(path: Path) -> Path:
    """A bundle's decoder checkpoint (an imported bundle's is the checkpoint), or the folder."""
    return Bundle.load(path).decoder if (path / MANIFEST).is_file() else path


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def cli(args: argparse.Namespace) -> int:
    config, _ = read_config(checkpoint_of(Path(args.path)))
    result = estimate(config)
    print(f"{'service':<8} {'part':<22} {'params':>8} {'FP16':>10} {'served':>10}  as")
    for p in result.parts:
        print(
            f"{p.service:<8} {p.part:<22} {p.parameters / 1e6:>7.1f}M {_gib(p.fp16_bytes):>10} "
            f"{_gib(p.served_bytes):>10}  {p.quantization}"
        )
    per_token = result.kv_bytes_per_token
    print(
        f"decoder KV cache (FP16): {per_token / 1024:.1f} KiB per token, "
        f"{_gib(per_token * args.context_tokens)} for {args.context_tokens} tokens"
    )
    return 0
