"""What a request's output must follow: the ``Constraint`` a ``GenerateRequest`` carries, as
pure data with its protobuf conversions (services.decoder.constraints compiles it)."""

from __future__ import annotations

import dataclasses
import enum

from autoglm.v1 import decoder_pb2
from services.common.errors import InvalidInput


class ConstraintKind(enum.Enum):
    JSON_SCHEMA = "json_schema"  # spec: the schema as JSON text
    REGEX = "regex"
    LARK = "lark"  # llguidance's lark dialect
    JSON_OBJECT = "json_object"  # spec unused: any JSON object


@dataclasses.dataclass(frozen=True)
class Constraint:
    """The grammar a request's output must follow (compiled by services.decoder.constraints).
    With ``start_after_token_id`` the output is free until that token (e.g. ``</think>``)."""

    kind: ConstraintKind
    spec: str = ""
    start_after_token_id: int | None = None

    def __post_init__(self) -> None:
        if self.kind is not ConstraintKind.JSON_OBJECT and not self.spec:
            raise InvalidInput(f"a {self.kind.value} constraint needs its {self.kind.value}")
        if self.start_after_token_id is not None and self.start_after_token_id < 0:
            raise InvalidInput("start_after_token_id must be >= 0")

    def to_pb(self) -> decoder_pb2.Constraint:
        pb = decoder_pb2.Constraint(start_after_token_id=self.start_after_token_id)
        if self.kind is ConstraintKind.JSON_OBJECT:
            pb.json_object = True
        else:
            setattr(pb, self.kind.value, self.spec)
        return pb

    @classmethod
    def from_pb(cls, pb: decoder_pb2.Constraint) -> Constraint:
        which = pb.WhichOneof("spec")
        if which is None:
            raise InvalidInput("a constraint needs one of json_schema, regex, lark, json_object")
        kind = ConstraintKind(which)
        return cls(
            kind=kind,
            spec="" if kind is ConstraintKind.JSON_OBJECT else getattr(pb, which),
            start_after_token_id=(
                pb.start_after_token_id if pb.HasField("start_after_token_id") else None
            ),
        )
