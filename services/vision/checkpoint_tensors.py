"""Tensors of a Hugging Face checkpoint under one name prefix, read in place (one
model.safetensors, or model.safetensors.index.json and its shards). Stands in until
bundle/checkpoint.py's read_tensors is on main."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"


def read_tensors(checkpoint: Path, prefix: str) -> dict[str, torch.Tensor]:
    """Every tensor whose name starts with ``prefix``, keyed by the rest of its name."""
    if (checkpoint / INDEX).is_file():
        weight_map: dict[str, str] = json.loads((checkpoint / INDEX).read_text())["weight_map"]
        files = sorted({f for name, f in weight_map.items() if name.startswith(prefix)})
    elif (checkpoint / SINGLE).is_file():
        files = [SINGLE]
    else:
        raise FileNotFoundError(f"{checkpoint}: neither {SINGLE} nor {INDEX}")
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        with safe_open(checkpoint / file, framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                if name.startswith(prefix):
                    tensors[name.removeprefix(prefix)] = f.get_tensor(name)
    if not tensors:
        raise ValueError(f"{checkpoint}: no tensor named {prefix}*")
    return tensors
