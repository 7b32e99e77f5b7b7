"""One Encode call's work, whatever the tower: check the request, decode every item (bytes ->
model input), then encode the inputs together (the batcher joins concurrent calls' inputs)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Generic, TypeVar

from services.common.errors import InvalidInput, TooLarge
from services.encoder.types import Embedding, EncoderInfo, MediaItem

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class MediaEncoder(Generic[T]):
    """Decode every item of a request (bytes -> model input), then encode them in batches."""

    decode: Callable[[bytes], T]
    encode: Callable[[list[T]], list[Embedding]]
    info: EncoderInfo

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
        inputs: list[T] = []
        for index, item in enumerate(items):
            try:
                inputs.append(self.decode(item.data))
            except InvalidInput as exc:  # TooLarge included: the same kind, with the item named
                raise type(exc)(f"item {index}: {exc}") from None
        return inputs
