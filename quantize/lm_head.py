"""GPTQ of the output projection (``--lm-head``): at batch 1 the bench decoder's bf16 lm_head
(32000 x 1024) is about half of the bytes a decode step reads; in 4 bits it is a quarter of that.

It is calibrated like a decoder layer's Linear, on what it really sees: the final norm's
outputs of the stack whose layers are already quantized (``quantize_layers`` leaves their
dequantized weights in the model). The embeddings stay as they are: a lookup reads one row per
token, so quantizing them would save memory but no bytes per token.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from quantize.checkpoint import QuantizedWeight, packs
from quantize.gptq import Hessian, gptq_quantize
from quantize.layerwise import GPTQSettings, inputs_reaching

LM_HEAD = "lm_head"


@torch.no_grad()
def quantize_lm_head(
    model: nn.Module, batches: list[dict[str, Any]], settings: GPTQSettings
) -> QuantizedWeight:
    head = model.get_submodule(LM_HEAD)
    assert isinstance(head, nn.Linear)
    if not packs(head.out_features, settings.bits):
        raise ValueError(
            f"--lm-head: a vocabulary of {head.out_features} is not a multiple of "
            f"{32 // settings.bits}, which {settings.bits}-bit GPTQ packing needs"
        )
    hessian = Hessian(head.in_features)

    for args, _ in inputs_reaching(model, head, batches):  # the logits are not needed
        hessian.add(args[0])
    return gptq_quantize(
        head.weight,
        hessian.matrix,
        bits=settings.bits,
        group_size=settings.group_size,
        act_order=settings.act_order,
        damp_percent=settings.damp_percent,
        block_size=settings.block_size,
    )
