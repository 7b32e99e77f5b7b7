"""Position ids of a prompt, as the gateway sends them and the engine runs them.

GLM-4 takes one position per token. GLM-4.1V's text model takes three, (t, h, w), for 3-D
mRoPE: the gateway computes them from each image's grid (as transformers' get_rope_index does)
and the decoder continues generating from the largest one + 1 on every axis.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from autoglm.v1 import decoder_pb2
from services.common.errors import InvalidInput


@dataclasses.dataclass(frozen=True)
class PositionIds:
    """Position ids of the prompt tokens, ``rows[axis][token]``: one row (GLM-4), or the three
    (t, h, w) rows of GLM-4.1V's 3-D mRoPE, where a text token has the same value in every row
    and an image token takes its rows from the image's grid (transformers' get_rope_index)."""

    rows: tuple[tuple[int, ...], ...]

    def __post_init__(self) -> None:
        if len(self.rows) not in (1, 3):
            raise InvalidInput(f"position ids must have 1 or 3 rows (axes), got {len(self.rows)}")
        if any(len(row) != self.length for row in self.rows):
            raise InvalidInput("every row of position ids must have one value per token")
        if self.length and min(min(row) for row in self.rows) < 0:
            raise InvalidInput("position ids must be >= 0")

    @classmethod
    def of(cls, rows: Iterable[Iterable[int]]) -> PositionIds:
        """From any nested sequence, e.g. ``tensor.tolist()`` of a [3, n] tensor."""
        return cls(tuple(tuple(int(v) for v in row) for row in rows))

    @property
    def axes(self) -> int:
        return len(self.rows)

    @property
    def length(self) -> int:
        return len(self.rows[0])

    @property
    def next_position(self) -> int:
        """Where generated tokens start, on every axis: one past the largest prompt position
        (transformers' rope_deltas)."""
        return max(max(row) for row in self.rows) + 1

    def to_pb(self) -> decoder_pb2.PositionIds:
        values = [v for row in self.rows for v in row]
        return decoder_pb2.PositionIds(axes=self.axes, values=values)

    @classmethod
    def from_pb(cls, pb: decoder_pb2.PositionIds) -> PositionIds:
        if pb.axes not in (1, 3) or len(pb.values) % pb.axes:
            raise InvalidInput(
                f"position ids: {len(pb.values)} values do not make {pb.axes} equal rows "
                "(axes must be 1 or 3)"
            )
        n = len(pb.values) // pb.axes
        return cls(tuple(tuple(pb.values[a * n : (a + 1) * n]) for a in range(pb.axes)))
