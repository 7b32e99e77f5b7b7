"""A request's budget (an audio request's decoded samples, an image request's pixels) is
checked from every item's header before any item is decoded."""

from __future__ import annotations

import pytest
import torch

from services.common.errors import InvalidInput, TooLarge
from services.encoder.pipeline import MediaEncoder, RequestBudget
from services.encoder.types import Embedding, EncoderInfo, MediaItem

INFO = EncoderInfo("toy", "cpu", "float32", "none", hidden_size=1, max_items=8)


def measure(data: bytes) -> int:
    """An item's size from its 'header': the number it spells."""
    if not data.isdigit():
        raise InvalidInput("no header")
    return int(data)


def encoder(limit: int, decoded: list[bytes]) -> MediaEncoder[int]:
    def decode(data: bytes) -> int:
        decoded.append(data)
        return measure(data)

    def encode(inputs: list[int]) -> list[Embedding]:
        return [Embedding(torch.full((1, 1), float(x))) for x in inputs]

    return MediaEncoder(decode, encode, INFO, RequestBudget(measure, limit, "samples"))


def items(*values: bytes) -> list[MediaItem]:
    return [MediaItem(v) for v in values]


def test_a_request_over_its_budget_is_refused_before_any_item_is_decoded() -> None:
    decoded: list[bytes] = []
    with pytest.raises(TooLarge) as raised:
        encoder(100, decoded).decode_all(items(b"60", b"50"))  # each fits, together they do not
    assert str(raised.value) == "the request's items hold 110 samples; at most 100 per request"
    assert decoded == []


def test_a_request_within_its_budget_is_decoded() -> None:
    decoded: list[bytes] = []
    assert encoder(100, decoded).decode_all(items(b"60", b"40")) == [60, 40]
    assert decoded == [b"60", b"40"]


def test_an_unreadable_header_is_named_by_its_item() -> None:
    decoded: list[bytes] = []
    with pytest.raises(InvalidInput, match=r"^item 1: no header$"):
        encoder(100, decoded).decode_all(items(b"1", b"x"))
    assert decoded == []
