"""Decoder weight quantization, applied in place to a loaded model: gptq, nf4, int8 or none.

Only the nn.Linear modules inside ``model.model.layers`` are replaced (attention and MLP
projections, named as in Hugging Face's Glm4ForCausalLM); embeddings, norms and lm_head keep
their precision, as GPTQ checkpoints and the design table expect.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from bundle.checkpoint import read_tensors
from quantize.checkpoint import QUANT_PARTS, read_quant_config
from services.decoder.config import QUANT_CHOICES
from services.decoder.gptq_linear import GPTQLinear

if TYPE_CHECKING:
    from bundle.layout import Bundle

log = logging.getLogger(__name__)


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


def _replace_linears(model: nn.Module, build: Callable[[str, nn.Linear], nn.Module]) -> None:
    for name, linear in decoder_linears(model).items():
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, build(name, linear))


def _apply_gptq(model: nn.Module, folder: Path, device: torch.device) -> str:
    if not (folder / "quantize_config.json").is_file() and not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"no GPTQ checkpoint at {folder}; run `autoglm quantize <bundle>` first "
            "(or serve the decoder with --quant none, nf4 or int8)"
        )
    config = read_quant_config(folder)
    tensors = read_tensors(folder, "")  # a whole model: every tensor of it
    used: set[str] = set()

    def build(name: str, linear: nn.Linear) -> nn.Module:
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
            dtype=linear.weight.dtype,
            device=device,
        )

    _replace_linears(model, build)
    _load_unquantized(model, {k: v for k, v in tensors.items() if k not in used}, folder)
    return f"gptq-{config.bits}bit"


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
