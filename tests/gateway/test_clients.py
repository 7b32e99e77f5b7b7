"""The embedding cache (by content hash, bounded in bytes) and the request deadline."""

from __future__ import annotations

import time

import pytest
import torch

from gateway.clients import Deadline, EmbeddingCache
from services.encoder.types import Embedding


def rows(n: int) -> Embedding:
    return Embedding(torch.zeros(n, 8, dtype=torch.float16))  # 16 bytes per row


def test_cache_returns_what_was_put_by_kind_and_hash() -> None:
    cache = EmbeddingCache(max_bytes=1024)
    grid = Embedding(torch.zeros(4, 8, dtype=torch.float16), (1, 2, 2))
    cache.put(("image", "aa"), grid)
    assert cache.get(("image", "aa")) is grid and cache.hits == 1
    assert cache.get(("audio", "aa")) is None  # same bytes, other modality: another entry


def test_cache_drops_least_recently_used_first_to_stay_under_its_bound() -> None:
    cache = EmbeddingCache(max_bytes=64)  # room for two 2-row tensors
    cache.put(("image", "a"), rows(2))
    cache.put(("image", "b"), rows(2))
    cache.get(("image", "a"))  # a is now the most recently used
    cache.put(("image", "c"), rows(2))
    assert cache.get(("image", "b")) is None
    assert cache.get(("image", "a")) is not None and cache.get(("image", "c")) is not None
    assert cache.bytes <= 64


def test_items_larger_than_the_cache_and_a_zero_cache_keep_nothing() -> None:
    small = EmbeddingCache(max_bytes=16)
    small.put(("image", "big"), rows(4))
    assert len(small) == 0
    off = EmbeddingCache(max_bytes=0)
    off.put(("image", "x"), rows(1))
    assert len(off) == 0


def test_deadline_counts_down_and_expires() -> None:
    deadline = Deadline(0.05)
    assert 0 < deadline.remaining() <= 0.05
    time.sleep(0.06)
    with pytest.raises(TimeoutError):
        deadline.remaining()
