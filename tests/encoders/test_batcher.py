"""Dynamic batching of Encode calls: the calls that wait while the tower is busy share its next
forward pass, each gets exactly its own embeddings back, and one call's bad file, cancellation
or size never costs another call anything."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Iterator

import pytest
import torch

from services.common.errors import InvalidInput, Overloaded
from services.encoder.batcher import EncodeBatcher
from services.encoder.pipeline import MediaEncoder
from services.encoder.types import EncoderInfo, MediaItem

INFO = EncoderInfo("toy", "cpu", "float32", "none", hidden_size=2, max_items=16)


class Tower:
    """A stand-in tower that records each forward pass's inputs and can be held busy."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail_next = False

    def decode(self, data: bytes) -> int:
        if not data.isdigit():
            raise InvalidInput("not a number")
        return int(data)

    def encode(self, inputs: list[int]) -> list[torch.Tensor]:
        self.gate.wait(timeout=10)
        self.batches.append(inputs)
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("the tower failed")
        return [torch.full((1, 2), float(x)) for x in inputs]


class TensorTower(Tower):
    """Decodes to tensors, as every real tower's preprocessing does."""

    def decode(self, data: bytes) -> torch.Tensor:  # type: ignore[override]
        return torch.full((2,), float(super().decode(data)))

    def encode(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:  # type: ignore[override]
        return super().encode([int(x[0]) for x in inputs])


@pytest.fixture
def worker() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        yield pool


def batcher_for(
    tower: Tower, worker: concurrent.futures.Executor, size: int, max_waiting: int = 64
) -> EncodeBatcher[MediaEncoder[int]]:
    return EncodeBatcher(MediaEncoder(tower.decode, tower.encode, INFO), worker, size, max_waiting)


def items(*values: str) -> list[MediaItem]:
    return [MediaItem(v.encode()) for v in values]


def values(embeddings: list[torch.Tensor]) -> list[int]:
    return [int(e[0, 0]) for e in embeddings]


async def hold_the_tower(
    tower: Tower, batcher: EncodeBatcher[MediaEncoder[int]]
) -> asyncio.Task[list[torch.Tensor]]:
    """Start a call for item 1 whose pass blocks until ``tower.gate`` is set, so the calls made
    meanwhile queue behind it."""
    tower.gate.clear()
    first = asyncio.create_task(batcher(items("1")))
    await asyncio.sleep(0.05)
    return first


async def test_calls_waiting_while_the_tower_is_busy_share_its_next_pass(worker) -> None:
    tower = Tower()
    batcher = batcher_for(tower, worker, size=8)
    first = await hold_the_tower(tower, batcher)
    others = [asyncio.create_task(batcher(items(f"{10 * i}", f"{10 * i + 1}"))) for i in (1, 2, 3)]
    await asyncio.sleep(0.05)
    tower.gate.set()
    assert values(await first) == [1]
    assert [values(await task) for task in others] == [[10, 11], [20, 21], [30, 31]]
    assert tower.batches == [[1], [10, 11, 20, 21, 30, 31]]
    assert batcher.batches == 2


async def test_a_batch_holds_whole_calls_up_to_its_size_and_a_big_call_alone(worker) -> None:
    tower = Tower()
    batcher = batcher_for(tower, worker, size=4)
    first = await hold_the_tower(tower, batcher)
    calls = [items("2", "3"), items("4", "5"), items(*"6789"), items("0")]
    tasks = [asyncio.create_task(batcher(c)) for c in calls]
    await asyncio.sleep(0.05)
    tower.gate.set()
    await asyncio.gather(first, *tasks)
    assert tower.batches == [[1], [2, 3, 4, 5], [6, 7, 8, 9], [0]]


async def test_a_bad_file_fails_only_its_own_call(worker) -> None:
    tower = Tower()
    batcher = batcher_for(tower, worker, size=8)
    good, bad = await asyncio.gather(
        batcher(items("7")), batcher(items("8", "x")), return_exceptions=True
    )
    assert values(good) == [7]
    assert isinstance(bad, InvalidInput) and "item 1" in str(bad)
    assert [x for batch in tower.batches for x in batch] == [7]


@pytest.mark.parametrize("kind", [Tower, TensorTower])
async def test_a_cancelled_call_is_dropped_before_its_pass(worker, kind: type[Tower]) -> None:
    tower = kind()
    batcher = batcher_for(tower, worker, size=8)
    first = await hold_the_tower(tower, batcher)
    stays = asyncio.create_task(batcher(items("3")))
    left = asyncio.create_task(batcher(items("2")))  # queued behind another call
    await asyncio.sleep(0.05)
    left.cancel()
    with pytest.raises(asyncio.CancelledError):
        await left
    tower.gate.set()
    assert values(await first) == [1] and values(await stays) == [3]
    assert tower.batches == [[1], [3]]


async def test_a_failed_pass_fails_its_calls_and_the_next_calls_are_served(worker) -> None:
    tower = Tower()
    batcher = batcher_for(tower, worker, size=8)
    tower.fail_next = True
    with pytest.raises(RuntimeError, match="tower failed"):
        await batcher(items("1"))
    assert values(await batcher(items("2"))) == [2]


async def test_past_the_waiting_bound_a_call_is_refused_at_once(worker) -> None:
    tower = Tower()
    batcher = batcher_for(tower, worker, size=8, max_waiting=2)
    first = await hold_the_tower(tower, batcher)  # in the tower: no longer waiting
    waiting = [asyncio.create_task(batcher(items(v))) for v in "23"]
    await asyncio.sleep(0.05)
    with pytest.raises(Overloaded, match="2 encode calls are already waiting"):
        await batcher(items("4"))
    tower.gate.set()
    await asyncio.gather(first, *waiting)
    assert values(await batcher(items("5"))) == [5]  # the queue drained: served again


async def test_a_cancelled_waiting_call_frees_its_place_at_once(worker, caplog) -> None:
    tower = Tower()
    batcher = batcher_for(tower, worker, size=8, max_waiting=1)
    first = await hold_the_tower(tower, batcher)
    left = asyncio.create_task(batcher(items("2")))
    await asyncio.sleep(0.05)
    with caplog.at_level("INFO", logger="services.encoder.batcher"):
        left.cancel()
        await asyncio.sleep(0)
    assert "cancelled by its caller" in caplog.text
    stays = asyncio.create_task(batcher(items("3")))  # the tower is still busy
    await asyncio.sleep(0.05)
    tower.gate.set()
    assert values(await first) == [1] and values(await stays) == [3]
    assert tower.batches == [[1], [3]]
