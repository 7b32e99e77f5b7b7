"""The quantized Linear layers on the device, at the bench decoder's shapes, against FP32.

int8 (bitsandbytes LLM.int8()), nf4 (bitsandbytes NF4) and GPTQ 4-bit on torch's int4 kernel
(with and without act-order), each for 1 and 16 input rows: agreement with the FP32 result and
median time next to a 16-bit ``F.linear`` on the same device.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from bench.device_check.measure import baseline_dtype, mean_cosine, median_ms, relative_error
from bench.device_check.runner import Check, Probe
from quantize.checkpoint import QuantizedWeight
from quantize.rtn import rtn_quantize
from services.decoder.bnb_layers import nf4_linear
from services.decoder.gptq_linear import GPTQLinear
from services.encoder.int8 import DEFAULT_THRESHOLD, Int8Linear

# (in, out) of the bench decoder's Linears: attention projections, MLP up/gate, MLP down.
SHAPES = ((1024, 1024), (1024, 5632), (2816, 1024))
ROWS = (1, 16)  # one decoding request, a batch of sixteen
MIN_COSINE = {"int8": 0.99, "nf4": 0.98}
MAX_RELATIVE_ERROR = 1e-2  # bf16 activations; a wrong bit layout is off by order one
GROUP_SIZE = 128


def kernel_checks(device: torch.device, repeats: int) -> Iterator[Check]:
    for inp, out in SHAPES:
        shape = f"{inp}->{out}"
        yield Check(f"int8 {shape}", partial(check_bnb, "int8", inp, out, device, repeats))
        yield Check(f"nf4 {shape}", partial(check_bnb, "nf4", inp, out, device, repeats))
        for act_order in (False, True):
            name = f"gptq{' act-order' if act_order else ''} {shape}"
            yield Check(name, partial(check_gptq, inp, out, act_order, device, repeats))


def seeded_linear(inp: int, out: int) -> nn.Linear:
    torch.manual_seed(inp * 10_000 + out)
    return nn.Linear(inp, out)


def check_bnb(
    kind: str, inp: int, out: int, device: torch.device, repeats: int, probe: Probe
) -> None:
    linear = seeded_linear(inp, out)
    if kind == "int8":
        layer: nn.Module = Int8Linear.from_linear(linear, DEFAULT_THRESHOLD).to(device).eval()
    else:
        layer = nf4_linear(linear, device)
    weight, bias = linear.weight.to(device), linear.bias.to(device)
    cosines = []
    with torch.inference_mode():
        for rows in ROWS:
            x = torch.randn(rows, inp, device=device)
            cosines.append(mean_cosine(layer(x), F.linear(x, weight, bias)))
    cosine = min(cosines)
    probe.record(cosine=cosine)
    probe.require(cosine >= MIN_COSINE[kind], f"cosine to FP32 >= {MIN_COSINE[kind]}")
    time_against_16bit(probe, layer, weight, bias, device, repeats)


def shuffled_groups(weight: QuantizedWeight) -> QuantizedWeight:
    """The same codes under an act-order g_idx: each input column in a scrambled group."""
    generator = torch.Generator().manual_seed(0)
    perm = torch.randperm(weight.q.shape[1], generator=generator)
    return dataclasses.replace(weight, g_idx=weight.g_idx[perm])


def check_gptq(
    inp: int, out: int, act_order: bool, device: torch.device, repeats: int, probe: Probe
) -> None:
    weight = rtn_quantize(seeded_linear(inp, out).weight, 4, GROUP_SIZE)
    if act_order:
        weight = shuffled_groups(weight)
    packed = weight.pack()
    layer = GPTQLinear(
        packed["qweight"], packed["qzeros"], packed["scales"], packed["g_idx"],
        bits=4, device=device,
    )  # fmt: skip
    probe.record(kernel=layer.kernel)
    probe.require(layer.kernel == f"int4-{device.type}", f"kernel is int4-{device.type}")
    if act_order:
        probe.require(layer.perm is not None, "act-order runs by permuting the inputs")
    dequantized = weight.dequantize().to(device)
    errors = []
    with torch.inference_mode():
        for rows in ROWS:
            x = torch.randn(rows, inp, device=device)
            errors.append(relative_error(layer(x), x @ dequantized.T))
    error = max(errors)
    probe.record(rel_error=error)
    probe.require(
        error < MAX_RELATIVE_ERROR, f"relative error to dequantized < {MAX_RELATIVE_ERROR}"
    )
    time_against_16bit(probe, layer, dequantized, None, device, repeats)


def time_against_16bit(
    probe: Probe,
    layer: Callable[[torch.Tensor], torch.Tensor],
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    device: torch.device,
    repeats: int,
) -> None:
    """The layer's median time per row count, and how many times faster it is than a 16-bit
    ``F.linear`` of the same shape (below 1: slower)."""
    dtype = baseline_dtype(device)
    name = str(dtype).removeprefix("torch.")
    weight16 = weight.to(dtype)
    bias16 = None if bias is None else bias.to(dtype)
    for rows in ROWS:
        x = torch.randn(rows, weight.shape[1], device=device)
        ms = median_ms(partial(layer, x), device, repeats)
        base = median_ms(partial(F.linear, x.to(dtype), weight16, bias16), device, repeats)
        probe.record(
            **{f"ms_m{rows}": ms, f"{name}_ms_m{rows}": base, f"speedup_m{rows}": base / ms}
        )
