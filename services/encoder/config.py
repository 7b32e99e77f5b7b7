"""Settings every encoder service shares. Light on purpose (no torch): the CLI imports the config
modules to build their flags. A kind (``VisionConfig``, ``AudioConfig``) sets its variable
prefix and port, restates ``max_items`` and ``batch_size`` with its own defaults and nouns, and
adds its own input limits."""

from __future__ import annotations

import dataclasses

from services.common.config import ServiceConfig, limit, setting

QUANTIZATIONS = ("int8", "none")


@dataclasses.dataclass(frozen=True)
class EncoderConfig(ServiceConfig):
    """What every encoder kind has."""

    quantization: str = setting("int8", "tower Linear weights: int8 (LLM.int8()) or none (FP32)")
    int8_threshold: float = limit(
        6.0, "LLM.int8() outlier threshold (0: no fp16 outlier columns)", zero_ok=True
    )
    max_items: int = limit(16, "most items per request")
    batch_size: int = limit(8, "inputs per forward pass of the tower")
    max_waiting_calls: int = limit(
        64, "Encode calls waiting for the tower; past it a call gets RESOURCE_EXHAUSTED (HTTP 429)"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.quantization not in QUANTIZATIONS:
            raise ValueError(
                f"quantization must be one of {QUANTIZATIONS}, got {self.quantization!r}"
            )
