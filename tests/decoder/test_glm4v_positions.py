"""Prompt position ids on the wire and in the prefix cache: 1 x n for GLM-4, 3 x n (t, h, w)
for GLM-4.1V's mRoPE."""

from __future__ import annotations

import dataclasses

import pytest

from autoglm.v1 import decoder_pb2
from services.common.errors import InvalidInput
from services.decoder.positions import PositionIds
from services.decoder.prefix_cache import block_hashes
from services.decoder.types import GenerateRequest

# text (0..2), a 2 x 2 image at 3 (t stays, h and w span the grid), text again from 5
T = (0, 1, 2, 3, 3, 3, 3, 5, 6)
H = (0, 1, 2, 3, 3, 4, 4, 5, 6)
W = (0, 1, 2, 3, 4, 3, 4, 5, 6)


def test_3d_positions_travel_row_major_and_come_back() -> None:
    positions = PositionIds((T, H, W))
    request = GenerateRequest("r", tuple(range(10, 19)), positions=positions)
    pb = request.to_pb()
    assert pb.positions.axes == 3
    assert list(pb.positions.values) == [*T, *H, *W]
    assert GenerateRequest.from_pb(pb) == request
    assert positions.next_position == 7  # one past the largest value, on every axis


def test_positions_are_optional_and_1d_positions_stay_1d() -> None:
    request = GenerateRequest("r", (5, 6, 7))
    assert not request.to_pb().HasField("positions")
    assert GenerateRequest.from_pb(request.to_pb()).positions is None
    one = GenerateRequest("r", (5, 6, 7), positions=PositionIds.of([[0, 1, 5]]))
    assert GenerateRequest.from_pb(one.to_pb()) == one


@pytest.mark.parametrize(
    ("axes", "values", "message"),
    [
        (2, [0, 1, 0, 1], "axes must be 1 or 3"),
        (3, [0, 1, 2, 3], "do not make 3 equal rows"),
        (0, [], "axes must be 1 or 3"),
        (3, [0, 1, 2, 0, 1, -1, 0, 1, 2], ">= 0"),
    ],
)
def test_malformed_positions_are_invalid_input(axes: int, values: list[int], message: str) -> None:
    pb = GenerateRequest("r", (4, 5, 6)).to_pb()
    pb.positions.CopyFrom(decoder_pb2.PositionIds(axes=axes, values=values))
    with pytest.raises(InvalidInput, match=message):
        GenerateRequest.from_pb(pb)


def test_positions_must_cover_every_prompt_token() -> None:
    with pytest.raises(InvalidInput, match="input_ids"):
        GenerateRequest("r", (1, 2, 3, 4), positions=PositionIds(((0, 1, 2),) * 3))


def test_the_prefix_cache_keys_every_position_row() -> None:
    ids = tuple(range(10, 19))
    base = GenerateRequest("r", ids, positions=PositionIds((T, H, W)))
    hashes = block_hashes(base, 4)
    # the second block holds image tokens: its h and w rows count, not only t
    swapped = dataclasses.replace(base, positions=PositionIds((T, W, H)))
    assert block_hashes(swapped, 4)[0] == hashes[0]
    assert block_hashes(swapped, 4)[1] != hashes[1]
    # a text block's three equal rows are the 1-D positions: the same K/V, the same hash
    implicit = GenerateRequest("r", ids)
    assert block_hashes(implicit, 4)[0] == hashes[0]
    assert block_hashes(implicit, 4)[1] != hashes[1]
