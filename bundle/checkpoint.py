"""Tensors read from a Hugging Face checkpoint folder in place, by name prefix.

A 9B checkpoint is ~20 GB in several shards; each service takes only its own part
(`model.visual.`, `model.language_model.` ...), so it opens only the shards that hold those
names and never a second copy of the weights.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import torch
from safetensors import safe_open

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


def weight_files(checkpoint_dir: Path | str) -> dict[str, list[str]]:
    """{shard file name: [tensor names in it]} for a single file or an index with shards."""
    root = Path(checkpoint_dir)
    index = root / INDEX_FILE
    if index.is_file():
        shards: dict[str, list[str]] = defaultdict(list)
        for name, shard in json.loads(index.read_text())["weight_map"].items():
            shards[shard].append(name)
        return dict(shards)
    single = root / SINGLE_FILE
    if single.is_file():
        with safe_open(single, framework="pt") as f:
            return {SINGLE_FILE: list(f.keys())}
    raise FileNotFoundError(f"{root}: no {SINGLE_FILE} and no {INDEX_FILE}")


def read_tensors(checkpoint_dir: Path | str, prefix: str) -> dict[str, torch.Tensor]:
    """Every tensor whose name starts with prefix, keyed by the rest of its name."""
    root = Path(checkpoint_dir)
    tensors: dict[str, torch.Tensor] = {}
    for shard, names in sorted(weight_files(root).items()):
        wanted = sorted(n for n in names if n.startswith(prefix))
        if not wanted:
            continue
        with safe_open(root / shard, framework="pt") as f:
            for name in wanted:
                tensors[name[len(prefix) :]] = f.get_tensor(name)
    if not tensors:
        raise KeyError(f"{root}: no tensor named {prefix}*")
    return tensors
