"""Layer-by-layer GPTQ of a transformer stack (transformers' Glm4ForCausalLM by default, whose
blocks are ``model.layers``; any model whose blocks sit in one nn.ModuleList works).

The calibration batches run through the embeddings once; then each block in turn sees
its inputs (the outputs of the layers before it, already quantized), collects the Hessian of
every Linear's inputs, has its Linears quantized, and runs again with the quantized weights to
produce the next layer's inputs. lm_head and embeddings are left alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, cast

import torch
from torch import nn
from tqdm import tqdm

from quantize.checkpoint import QuantizedWeight
from quantize.gptq import DEFAULT_BLOCK, DEFAULT_DAMP, Hessian, gptq_quantize

# Per calibration batch: the block's hidden states, its other positional arguments, its kwargs.
LayerInputs = list[tuple[torch.Tensor, tuple[Any, ...], dict[str, Any]]]


@dataclasses.dataclass(frozen=True)
class GPTQSettings:
    bits: int = 4
    group_size: int = 128
    act_order: bool = False
    damp_percent: float = DEFAULT_DAMP
    block_size: int = DEFAULT_BLOCK


def calibration_ids(token_ids: list[int], samples: int, seq_len: int) -> torch.Tensor:
    """``samples`` windows of ``seq_len`` tokens spread evenly over the text: [samples, seq_len]."""
    if len(token_ids) < seq_len:
        raise ValueError(
            f"calibration text has {len(token_ids)} tokens, fewer than --seq-len {seq_len}"
        )
    ids = torch.tensor(token_ids, dtype=torch.long)
    starts = torch.linspace(0, len(token_ids) - seq_len, samples).round().long().tolist()
    return torch.stack([ids[s : s + seq_len] for s in starts])


class _Captured(Exception):
    """Stops a forward pass once the watched module has received its inputs."""


def inputs_reaching(
    model: nn.Module, module: nn.Module, batches: list[dict[str, Any]]
) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    """The (args, kwargs) each batch's forward pass gives ``module``; nothing after it runs."""
    seen: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def capture(_: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        seen.append((args, dict(kwargs)))
        raise _Captured

    hook = module.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        for batch in batches:
            with contextlib.suppress(_Captured):
                model(**batch)
    finally:
        hook.remove()
    return seen


def _first_layer_inputs(
    model: nn.Module, first: nn.Module, batches: list[dict[str, Any]]
) -> LayerInputs:
    inputs: LayerInputs = []
    for args, kwargs in inputs_reaching(model, first, batches):
        if args:
            inputs.append((args[0], args[1:], kwargs))
        else:
            inputs.append((kwargs.pop("hidden_states"), (), kwargs))
    return inputs


def _run(
    layer: nn.Module, hidden: torch.Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    output = layer(hidden, *args, **kwargs)
    return output[0] if isinstance(output, tuple) else output


class _SharedHessians:
    """One Hessian per distinct input: q, k and v read the same tensor, so they share one."""

    def __init__(self, linears: dict[str, nn.Linear]) -> None:
        self._owner: dict[str, Hessian] = {}
        self._last: tuple[torch.Tensor, Hessian] | None = None
        self._hooks = [
            module.register_forward_hook(lambda _m, args, _out, name=name: self._add(name, args[0]))
            for name, module in linears.items()
        ]

    def _add(self, name: str, inputs: torch.Tensor) -> None:
        if self._last is not None and self._last[0] is inputs:
            self._owner.setdefault(name, self._last[1])  # same input as the previous Linear
            return
        hessian = self._owner.setdefault(name, Hessian(inputs.shape[-1]))
        hessian.add(inputs)
        self._last = (inputs, hessian)

    def matrix(self, name: str) -> torch.Tensor:
        return self._owner[name].matrix

    def remove_hooks(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._last = None


@torch.no_grad()
def quantize_layers(
    model: nn.Module,
    batches: list[dict[str, Any]],
    settings: GPTQSettings,
    layers_path: str = "model.layers",
    progress: bool = True,
) -> dict[str, QuantizedWeight]:
    """GPTQ every Linear in the blocks at ``layers_path``; returns them by full module name.

    ``batches`` are keyword arguments for ``model(...)``. The model's Linear weights are
    replaced by their dequantized values as it goes, so on return ``model`` computes what the
    quantized checkpoint will.
    """
    model.eval()
    layers = cast(nn.ModuleList, model.get_submodule(layers_path))
    inputs = _first_layer_inputs(model, layers[0], batches)
    quantized: dict[str, QuantizedWeight] = {}
    bar = tqdm(range(len(layers)), desc="GPTQ", unit="layer", disable=not progress)
    for index in bar:
        layer = layers[index]
        linears = {n: m for n, m in layer.named_modules() if isinstance(m, nn.Linear)}
        hessians = _SharedHessians(linears)
        try:
            for hidden, args, kwargs in inputs:
                _run(layer, hidden, args, kwargs)
        finally:
            hessians.remove_hooks()
        for name, linear in linears.items():
            weight = gptq_quantize(
                linear.weight,
                hessians.matrix(name),
                bits=settings.bits,
                group_size=settings.group_size,
                act_order=settings.act_order,
                damp_percent=settings.damp_percent,
                block_size=settings.block_size,
            )
            linear.weight.copy_(weight.dequantize().to(linear.weight.dtype))
            quantized[f"{layers_path}.{index}.{name}"] = weight
        # The next block calibrates on what this quantized block actually outputs.
        inputs = [(_run(layer, h, args, kwargs), args, kwargs) for h, args, kwargs in inputs]
        bar.set_postfix_str(f"layer {index}: {len(linears)} linears")
    return quantized
