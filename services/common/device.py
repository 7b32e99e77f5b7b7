"""Device placement: each service is pinned to one device, `auto` picks the first GPU if any."""

from __future__ import annotations

import torch


def resolve_device(spec: str) -> torch.device:
    """Turn a config device string into a torch.device, failing early if it does not exist."""
    if spec == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {spec} requested but CUDA is not available")
        index = device.index if device.index is not None else 0
        if index >= torch.cuda.device_count():
            raise ValueError(f"device {spec} requested but only {torch.cuda.device_count()} GPUs")
        return torch.device("cuda", index)
    return device
