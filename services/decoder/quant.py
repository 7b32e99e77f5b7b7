"""Decoder weight quantization, applied in place to a loaded model: gptq, nf4, int8 or none.

Only the nn.Linear modules inside ``model.model.layers`` are replaced (attention and MLP
projections, named as in Hugging Face's Glm4ForCausalLM); embeddings, norms and lm_head keep
their precision, as GPTQ checkpoints and the design table expect, except a GPTQ checkpoint
whose lm_head is quantized too (``autoglm quantize --lm-head``, GPTQModel's ``lm_head``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn
from transformers import PretrainedConfig

from quantize.checkpoint import QUANT_PARTS, read_quant_config
from services.decoder.config import QUANT_CHOICES
from services.decoder.gptq_linear import GPTQLinear
from services.decoder.model import read_text_weights
from services.decoder.text_config import TextModelConfig

if TYPE_CHECKING:
    from bundle.layout import Bundle

log = logging.getLogger(__name__)

# The model's fused Linears and the separate ones of a checkpoint they join, in output order:
# GPTQModel splits GLM's gate_up_proj in two; q, k and v are three in every checkpoint.
FUSED = {
    "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
    "self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
}


def apply_quantization(
    model: nn.Module, quantization: str, bundle: Bundle, device: torch.device
) -> str:
    """Replace the decoder layers' Linear modules in place; return a label for logs and Info."""
    if quantization == "none":
        return "none"
    if quantization == "gptq":
        return _apply_gptq(model, Path(bundle.decoder_gptq), device)
    if quantization == "nf4":
        from services.decoder.bnb_layers import nf4_linear

        _replace_linears(model, lambda _, linear: nf4_linear(linear, device))
        return "nf4"
    if quantization == "int8":
        from services.decoder.bnb_layers import int8_linear

        _replace_linears(model, lambda _, linear: int8_linear(linear, device))
        return "int8"
    raise ValueError(
        f"unknown decoder quantization {quantization!r}; choose one of {QUANT_CHOICES}"
    )


def decoder_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """The quantizable Linear modules, keyed by their full name (``model.layers.N....``)."""
    layers = model.get_submodule("model.layers")
    return {
        f"model.layers.{name}": module
        for name, module in layers.named_modules()
        if isinstance(module, nn.Linear)
    }


def _replace_linears(
    model: nn.Module,
    build: Callable[[str, nn.Linear], nn.Module],
    linears: dict[str, nn.Linear] | None = None,
) -> None:
    for name, linear in (linears or decoder_linears(model)).items():
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, build(name, linear))


def _apply_gptq(model: nn.Module, folder: Path, device: torch.device) -> str:
    if not (folder / "quantize_config.json").is_file() and not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"no GPTQ checkpoint at {folder}; run `autoglm quantize <bundle>` first "
            "(or serve the decoder with --quant none, nf4 or int8)"
        )
    config = read_quant_config(folder)
    # named as the model's own checkpoint is: GLM-4.1V's model.language_model.* included
    tensors = read_text_weights(folder, _text_config(model))
    used: set[str] = set()

    def gptq_linear(name: str, dtype: torch.dtype) -> GPTQLinear:
        keys = {part: f"{name}.{part}" for part in QUANT_PARTS}
        missing = [key for key in keys.values() if key not in tensors]
        if missing:
            raise ValueError(f"GPTQ checkpoint {folder} lacks {missing[0]}")
        used.update(keys.values())
        bias = tensors.get(f"{name}.bias")
        if bias is not None:
            used.add(f"{name}.bias")
        return GPTQLinear(
            tensors[keys["qweight"]],
            tensors[keys["qzeros"]],
            tensors[keys["scales"]],
            tensors[keys["g_idx"]],
            bias,
            bits=config.bits,
            checkpoint_format=config.checkpoint_format,
            dtype=dtype,
            device=device,
        )

    def build(name: str, linear: nn.Linear) -> nn.Module:
        fused = next((f for f in FUSED if name.endswith(f)), None)
        if fused is not None and f"{name}.qweight" not in tensors:
            base = name.removesuffix(fused)
            parts = [base + part for part in FUSED[fused]]
            # act-order parts, each in its own input order, run one by one
            if not _join_parts(tensors, name, parts, used, config.bits):
                return JoinedLinear(*(gptq_linear(p, linear.weight.dtype) for p in parts))
        return gptq_linear(name, linear.weight.dtype)

    linears = decoder_linears(model)
    if config.lm_head or "lm_head.qweight" in tensors:
        head = model.get_submodule("lm_head")
        assert isinstance(head, nn.Linear)
        linears["lm_head"] = head
    _replace_linears(model, build, linears)
    _load_unquantized(model, {k: v for k, v in tensors.items() if k not in used}, folder)
    return f"gptq-{config.bits}bit" + ("+lm_head" if "lm_head" in linears else "")


def _text_config(model: nn.Module) -> TextModelConfig:
    """The serving model's, or that of transformers' Glm4ForCausalLM (which bench/quant.py and
    the quantization tests run the checkpoint in)."""
    config = getattr(model, "config", None)
    if isinstance(config, TextModelConfig):
        return config
    if isinstance(config, PretrainedConfig):
        return TextModelConfig.from_hf(config)
    raise TypeError(f"{type(model).__name__} has no GLM-4 text config")


class JoinedLinear(nn.Module):
    """The outputs of separately quantized parts of one fused Linear, side by side."""

    def __init__(self, *parts: nn.Module) -> None:
        super().__init__()
        self.parts = nn.ModuleList(parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([part(x) for part in self.parts], dim=-1)


def _join_parts(
    tensors: dict[str, torch.Tensor], fused: str, parts: list[str], used: set[str], bits: int
) -> bool:
    """The quantized parts of a fused Linear (GPTQModel's gate_proj and up_proj, any
    checkpoint's q, k and v) as one: when all share one g_idx (no act-order, the usual case)
    and each part's outputs fill whole qzeros words, their packed tensors join along the
    output dimension (qweight, scales, the qzeros words and the biases all run along it) into
    ``fused``'s; returns False when they do not."""
    if any(f"{part}.g_idx" not in tensors for part in parts):
        return True  # nothing to join: the caller names what is missing
    g_idx = tensors[f"{parts[0]}.g_idx"]
    if not all(torch.equal(tensors[f"{part}.g_idx"], g_idx) for part in parts):
        return False
    qzeros = [tensors[f"{part}.qzeros"] for part in parts]
    scales = [tensors[f"{part}.scales"] for part in parts]
    if any(z.shape[-1] * 32 != s.shape[-1] * bits for z, s in zip(qzeros, scales, strict=True)):
        return False  # a part ends inside a qzeros word
    pieces = [*QUANT_PARTS, "bias"] if all(f"{p}.bias" in tensors for p in parts) else QUANT_PARTS
    for piece in pieces:
        keys = [f"{part}.{piece}" for part in parts]
        joined = g_idx if piece == "g_idx" else torch.cat([tensors[k] for k in keys], dim=-1)
        tensors[f"{fused}.{piece}"] = joined
        used.update(keys)
    return True


def _load_unquantized(model: nn.Module, tensors: dict[str, torch.Tensor], folder: Path) -> None:
    """A GPTQ checkpoint is a whole model: its embeddings, norms and lm_head win as well."""
    state = model.state_dict()
    for key, value in tensors.items():
        target = state.get(key)
        if target is None:
            log.debug("GPTQ checkpoint %s: ignoring %s (not in the model)", folder, key)
            continue
        if target.shape != value.shape:
            raise ValueError(
                f"GPTQ checkpoint {folder}: {key} has shape {tuple(value.shape)}, "
                f"the model expects {tuple(target.shape)}"
            )
        with torch.no_grad():
            target.copy_(value.to(target.dtype))
