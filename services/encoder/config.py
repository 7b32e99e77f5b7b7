"""Settings every encoder service shares, and how a kind (vision, audio) declares its own.
Light on purpose (no torch): the CLI imports the config modules to build their flags."""

from __future__ import annotations

import dataclasses
import inspect
import typing
from typing import ClassVar, TypeVar

from services.common.config import ServiceConfig, setting

T = TypeVar("T", int, float)

QUANTIZATIONS = ("int8", "none")


def limit(default: T, text: str) -> T:
    """A setting that must be positive: EncoderConfig checks every field made here."""
    field = typing.cast(dataclasses.Field[T], setting(default, text))
    metadata = {**field.metadata, "positive": True}
    return typing.cast(T, dataclasses.field(default=default, metadata=metadata))


@dataclasses.dataclass(frozen=True)
class EncoderConfig(ServiceConfig):
    """What every encoder kind has. A kind states its variable prefix, port and batching
    defaults in its class statement (``__init_subclass__``), its --help nouns in ``NOUNS``, and
    adds its own input limits as ``limit`` fields."""

    # What --help calls a request's items and a forward pass's inputs (images, clips, windows).
    NOUNS: ClassVar[tuple[str, str]] = ("items", "inputs")

    quantization: str = setting("int8", "tower Linear weights: int8 (LLM.int8()) or none (FP32)")
    int8_threshold: float = setting(
        6.0, "LLM.int8() outlier threshold (0: no fp16 outlier columns)"
    )
    max_items: int = limit(16, "most items per request")
    batch_size: int = limit(8, "inputs per forward pass of the tower")
    max_waiting_calls: int = limit(
        64, "Encode calls waiting for the tower; past it a call gets RESOURCE_EXHAUSTED (HTTP 429)"
    )

    def __init_subclass__(
        cls, *, env_prefix: str, port: int, max_items: int, batch_size: int
    ) -> None:
        """A kind's variable prefix, port and batching defaults, from its class statement. This
        runs before @dataclass reads the class, so they become the fields' own defaults."""
        super().__init_subclass__()
        cls.ENV_PREFIX = env_prefix
        items, inputs = cls.NOUNS
        fields = {
            "port": dataclasses.field(default=port),  # as ServiceConfig's: no help line
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
