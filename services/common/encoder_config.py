"""Settings both encoder services share. Light on purpose (no torch): the CLI imports the
config modules to build their flags."""

from __future__ import annotations

import dataclasses

from services.common.config import ServiceConfig

QUANTIZATIONS = ("int8", "none")


def help_text(text: str) -> dict[str, str]:
    """Field metadata the CLI turns into the flag's --help line."""
    return {"help": text}


@dataclasses.dataclass(frozen=True)
class EncoderConfig(ServiceConfig):
    quantization: str = dataclasses.field(
        default="int8", metadata=help_text("tower Linear weights: int8 (LLM.int8()) or none (FP32)")
    )
    int8_threshold: float = dataclasses.field(
        default=6.0, metadata=help_text("LLM.int8() outlier threshold (0: no fp16 outlier columns)")
    )
    max_items: int = dataclasses.field(default=16, metadata=help_text("most items per request"))
    batch_size: int = dataclasses.field(
        default=8, metadata=help_text("inputs per forward pass of the tower")
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.quantization not in QUANTIZATIONS:
            raise ValueError(
                f"quantization must be one of {QUANTIZATIONS}, got {self.quantization!r}"
            )
        if self.int8_threshold < 0:
            raise ValueError(f"int8_threshold must be >= 0, got {self.int8_threshold}")
        self._check_positive("max_items", "batch_size")

    def _check_positive(self, *names: str) -> None:
        for name in names:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
