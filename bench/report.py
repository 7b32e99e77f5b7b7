"""What every benchmark's JSON carries: the machine it ran on, written the same way."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import torch
from rich.console import Console


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def write_report(path: Path, report: dict[str, Any], console: Console) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**report, "machine": machine()}, indent=2) + "\n")
    console.print(f"wrote {path}")
