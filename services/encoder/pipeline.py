"""One Encode call's work, whatever the tower: check the request, decode every item (bytes ->
model input), then encode the inputs together (the batcher joins concurrent calls' inputs).

A request's items are first measured from their headers against its budget (an audio
request's decoded samples, an image request's pixels), so a request of many items each within
its own limits is still refused before any of them is decoded: gRPC callers reach the encoders
directly, not only through the gateway's budgets."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Generic, TypeVar

from services.common.errors import InvalidInput, TooLarge
from services.encoder.types import Embedding, EncoderInfo, MediaItem

T = TypeVar("T")
R = TypeVar("R")


@dataclasses.dataclass(frozen=True)
class RequestBudget:
    """The most of something a request's items may add up to, read from their headers."""

    measure: Callable[[bytes], int]  # one item's share, from its header (checked on the way)
    limit: int
    unit: str  # what is counted, for the message: "samples (channels x frames)", "pixels"


@dataclasses.dataclass(frozen=True)
class MediaEncoder(Generic[T]):
    """Decode every item of a request (bytes -> model input), then encode them in batches."""

    decode: Callable[[bytes], T]
    encode: Callable[[list[T]], list[Embedding]]
    info: EncoderInfo
    budget: RequestBudget | None = None

    def __call__(self, items: list[MediaItem]) -> list[Embedding]:
        return self.encode(self.decode_all(items))

    def decode_all(self, items: list[MediaItem]) -> list[T]:
        """Check the request's limits and decode every item, naming the one that fails."""
        if not items:
            raise InvalidInput("the request has no items")
        if len(items) > self.info.max_items:
            raise TooLarge(
                f"{len(items)} items exceed the limit of {self.info.max_items} per request"
            )
        if self.budget is not None:
            measure = self.budget.measure
            total = sum(_per_item(index, measure, item.data) for index, item in enumerate(items))
            if total > self.budget.limit:
                raise TooLarge(
                    f"the request's items hold {total} {self.budget.unit}; at most "
                    f"{self.budget.limit} per request"
                )
        return [_per_item(index, self.decode, item.data) for index, item in enumerate(items)]


def _per_item(index: int, work: Callable[[bytes], R], data: bytes) -> R:
    """``work(data)``, its error naming the item."""
    try:
        return work(data)
    except InvalidInput as exc:  # TooLarge included: the same kind, with the item named
        raise type(exc)(f"item {index}: {exc}") from None
