"""Settings every encoder service shares, and how a kind (vision, audio) declares its own.
Light on purpose (no torch): the CLI imports the config modules to build their flags."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, ClassVar

from services.common.config import ServiceConfig

QUANTIZATIONS = ("int8", "none")


def help_text(text: str) -> dict[str, str]:
    """Field metadata the CLI turns into the flag's --help line."""
    return {"help": text}


def limit(default: float, text: str) -> Any:
    """A field that must be positive (EncoderConfig checks it), with its --help line."""
    return dataclasses.field(default=default, metadata={**help_text(text), "positive": True})


@dataclasses.dataclass(frozen=True)
class EncoderConfig(ServiceConfig):
    """What every encoder kind has. A kind states its variable prefix, port and batching
    defaults in its class statement (``__init_subclass__``), its --help nouns in ``NOUNS``, and
    adds its own input limits as ``limit`` fields."""

    # What --help calls a request's items and a forward pass's inputs (images, clips, windows).
    NOUNS: ClassVar[tuple[str, str]] = ("items", "inputs")

    quantization: str = dataclasses.field(
        default="int8", metadata=help_text("tower Linear weights: int8 (LLM.int8()) or none (FP32)")
    )
    int8_threshold: float = dataclasses.field(
        default=6.0, metadata=help_text("LLM.int8() outlier threshold (0: no fp16 outlier columns)")
    )
    max_items: int = limit(16, "most items per request")
    batch_size: int = limit(8, "inputs per forward pass of the tower")

    def __init_subclass__(
        cls, *, env_prefix: str, port: int, max_items: int, batch_size: int
    ) -> None:
        """A kind's variable prefix, port and batching defaults, from its class statement. This
        runs before @dataclass reads the class, so they become the fields' own defaults."""
        super().__init_subclass__()
        cls.ENV_PREFIX = env_prefix
        items, inputs = cls.NOUNS
        fields = {
            "port": dataclasses.field(default=port),
            "max_items": limit(max_items, f"most {items} per request"),
            "batch_size": limit(batch_size, f"{inputs} per forward pass of the tower"),
        }
        annotations = dict(inspect.get_annotations(cls))
        for name, field in fields.items():
            setattr(cls, name, field)
            annotations[name] = "int"
        cls.__annotations__ = annotations

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.quantization not in QUANTIZATIONS:
            raise ValueError(
                f"quantization must be one of {QUANTIZATIONS}, got {self.quantization!r}"
            )
        if self.int8_threshold < 0:
            raise ValueError(f"int8_threshold must be >= 0, got {self.int8_threshold}")
        for f in dataclasses.fields(self):
            if f.metadata.get("positive") and getattr(self, f.name) <= 0:
                raise ValueError(f"{f.name} must be positive, got {getattr(self, f.name)}")
