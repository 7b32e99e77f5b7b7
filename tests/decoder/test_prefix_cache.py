"""Automatic prefix caching: the block pool (hash chain, reference counts, LRU eviction), then
the engine reusing cached prompt blocks with the same greedy output as without them."""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from services.common.errors import InvalidInput
from services.decoder.block_pool import BlockPool
from services.decoder.engine import Engine
from services.decoder.model import Glm4ForCausalLM as ServingGlm4
from services.decoder.params import StoppingParams
from services.decoder.positions import PositionIds
from services.decoder.prefix_cache import block_hashes
from services.decoder.types import GenerateRequest, MultimodalSegment
from tests.decoder.engines import make_engine

BLOCK = 8


def ids(n: int, seed: int) -> tuple[int, ...]:
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.randint(3, 128, (n,), generator=generator).tolist())


def gen(rid: str, input_ids: tuple[int, ...], max_tokens: int = 6, **fields) -> GenerateRequest:
    stopping = StoppingParams(max_tokens, ignore_eos=True)
    return GenerateRequest(rid, input_ids, stopping=stopping, **fields)


# --- the block pool ---------------------------------------------------------------------------


def test_a_block_hash_covers_its_prefix_tokens_positions_and_embeddings() -> None:
    base = gen("a", ids(36, seed=0))
    hashes = block_hashes(base, BLOCK)
    assert len(hashes) == 36 // BLOCK  # the partial last block is never cached
    assert block_hashes(dataclasses.replace(base, request_id="b"), BLOCK) == hashes

    changed = list(base.input_ids)
    changed[10] += 1  # a token of block 1: blocks 1.. differ, chained, though 2.. hold equal ids
    other = block_hashes(dataclasses.replace(base, input_ids=tuple(changed)), BLOCK)
    assert other[0] == hashes[0] and all(a != b for a, b in zip(other[1:], hashes[1:], strict=True))

    shifted = dataclasses.replace(base, positions=PositionIds.of([range(1, 37)]))
    assert block_hashes(shifted, BLOCK)[0] != hashes[0]
    explicit = dataclasses.replace(base, positions=PositionIds.of([range(36)]))
    assert block_hashes(explicit, BLOCK) == hashes  # the same positions as the implicit ones

    def with_image(seed: int) -> tuple[bytes, ...]:
        rows = torch.randn(6, 64, generator=torch.Generator().manual_seed(seed))
        return block_hashes(dataclasses.replace(base, segments=(MultimodalSegment(12, rows),)), 8)

    first, again, other_image = with_image(1), with_image(1), with_image(2)
    assert first == again and first[0] == hashes[0] and first[1] != hashes[1]
    assert first[0] == other_image[0] and first[1] != other_image[1]


def test_blocks_are_shared_while_referenced_and_stay_cached_when_released() -> None:
    pool = BlockPool(num_blocks=6, prefix_caching=True)
    hashes = (b"h0", b"h1", b"h2")
    a = pool.allocate([], 4)
    pool.register(a[:3], hashes)
    assert pool.match(hashes) == a[:3] and pool.match((b"h0", b"other")) == a[:1]

    b = pool.allocate(pool.match(hashes[:2]), 1)
    assert b[:2] == a[:2] and pool.free_blocks == 1
    pool.free(a)
    assert pool.free_blocks == 3  # a's block 2 is kept cached, evictable; block 3 is free
    assert pool.match(hashes) == a[:3]
    pool.free(b)
    assert pool.free_blocks == 6 and pool.cached_blocks == 3  # nothing in use, all reusable

    c = pool.allocate(pool.match(hashes), 3)  # idle matched blocks count against free space
    assert not pool.can_allocate([], 1) and c[:3] == a[:3]
    pool.free(c)


def test_eviction_takes_uncached_blocks_first_then_the_least_recently_used_tail() -> None:
    pool = BlockPool(num_blocks=4, prefix_caching=True)
    old = pool.allocate([], 2)
    pool.register(old, (b"o0", b"o1"))
    pool.free(old)
    new = pool.allocate([], 2)
    pool.register(new, (b"n0", b"n1"))
    pool.free(new)
    assert pool.free_blocks == 4 and pool.cached_blocks == 4

    taken = pool.allocate([], 1)
    assert taken == [old[1]]  # the oldest request's last block goes first: its head still hits
    assert pool.match((b"o0", b"o1")) == old[:1] and pool.match((b"n0", b"n1")) == new
    pool.allocate(pool.match((b"o0",)), 0)  # touching o0 makes it the most recently used
    assert pool.allocate([], 1) == [new[1]]


def test_with_prefix_caching_off_nothing_is_kept_or_matched() -> None:
    pool = BlockPool(num_blocks=4, prefix_caching=False)
    blocks = pool.allocate([], 2)
    pool.register(blocks, (b"h0", b"h1"))
    pool.free(blocks)
    assert pool.match((b"h0", b"h1")) == [] and pool.cached_blocks == 0


# --- the engine -------------------------------------------------------------------------------


def one_by_one(engine: Engine, requests: list[GenerateRequest]) -> list[tuple[list[int], int]]:
    """Each request run to its end before the next: (greedy tokens, cached prompt tokens)."""
    results = []
    for request in requests:
        engine.add(request)
        outputs = run(engine)[request.request_id]
        assert len({o.cached_tokens for o in outputs}) == 1  # on every output of the request
        results.append(([t for o in outputs for t in o.token_ids], outputs[0].cached_tokens))
    return results


def run(engine: Engine) -> dict[str, list]:
    outputs: dict[str, list] = {}
    while engine.has_work():
        for out in engine.step():
            outputs.setdefault(out.request_id, []).append(out)
    assert engine.stats().free_cache_tokens == engine.cache.total_tokens  # all back, or evictable
    return outputs


def test_requests_are_checked_and_hashed_off_the_engine_thread(tiny_model: ServingGlm4) -> None:
    engine = make_engine(tiny_model)
    request = gen("r", ids(20, seed=6))
    with ThreadPoolExecutor(1) as pool:  # what the runner does, so decoding never waits on it
        pending = pool.submit(engine.prepare, request).result()
    assert not engine.scheduler.waiting and pending.block_hashes == block_hashes(request, BLOCK)
    engine.add(pending)
    assert list(engine.scheduler.waiting) == [pending]
    with pytest.raises(InvalidInput, match="input_ids"):
        engine.prepare(gen("bad", (10**6,)))


def test_a_shared_prefix_is_reused_with_the_same_greedy_output(tiny_model: ServingGlm4) -> None:
    system = ids(45, seed=1)  # 5 full blocks and a partial one
    requests = [gen(f"r{i}", system + ids(7 + i, seed=10 + i)) for i in range(3)]
    requests.append(gen("again", requests[0].input_ids))
    off = one_by_one(make_engine(tiny_model, prefix_caching=False), requests)
    # chunks of 12 tokens: the first computed chunk starts at a block boundary, not a chunk's
    on = one_by_one(make_engine(tiny_model, chunk=12), requests)
    assert [tokens for tokens, _ in on] == [tokens for tokens, _ in off]
    assert [cached for _, cached in off] == [0, 0, 0, 0]
    # r0 wrote 52 prompt tokens = 6 full blocks, the shared 45 tokens reach into the 6th
    assert [cached for _, cached in on] == [0, 40, 40, 48]


def test_a_prompt_of_whole_blocks_still_computes_its_last_block(tiny_model: ServingGlm4) -> None:
    prompt = ids(4 * BLOCK, seed=2)
    engine = make_engine(tiny_model)
    first, second = one_by_one(engine, [gen("a", prompt), gen("b", prompt)])
    assert (first[1], second[1]) == (0, 3 * BLOCK) and first[0] == second[0]


def test_a_running_request_shares_its_blocks_and_duplicates_are_not_cached_twice(
    tiny_model: ServingGlm4,
) -> None:
    prompt = ids(30, seed=3)
    engine = make_engine(tiny_model)
    engine.add(gen("twin-a", prompt, max_tokens=12))
    engine.add(gen("twin-b", prompt, max_tokens=12))  # same step: neither finds the other
    first = engine.step()
    engine.add(gen("late", prompt + ids(5, seed=4)))  # while both twins still decode
    outputs = run(engine)
    for out in first:
        outputs[out.request_id].insert(0, out)
    assert [outputs[r][0].cached_tokens for r in ("twin-a", "twin-b", "late")] == [0, 0, 24]
    assert engine.cache.blocks.cached_blocks == 35 // BLOCK  # one copy of each prompt block
    alone = make_engine(tiny_model, prefix_caching=False)
    expected = one_by_one(alone, [gen("twin", prompt, 12), gen("late", prompt + ids(5, seed=4))])
    assert [t for o in outputs["twin-b"] for t in o.token_ids] == expected[0][0]
    assert [t for o in outputs["late"] for t in o.token_ids] == expected[1][0]


def test_multimodal_blocks_hit_only_for_the_same_embeddings(tiny_model: ServingGlm4) -> None:
    prompt = ids(40, seed=5)

    def screenshot(seed: int) -> GenerateRequest:
        rows = torch.randn(10, 64, generator=torch.Generator().manual_seed(seed))
        return gen(f"image-{seed}", prompt, segments=(MultimodalSegment(20, rows),))

    requests = [screenshot(1), screenshot(2), screenshot(1)]
    on = one_by_one(make_engine(tiny_model), requests)
    off = one_by_one(make_engine(tiny_model, prefix_caching=False), requests)
    assert [t for t, _ in on] == [t for t, _ in off] and on[0][0] != on[1][0]
    # the image covers tokens 20..29: only the 2 blocks before it are shared by another image
    assert [cached for _, cached in on] == [0, 2 * BLOCK, 4 * BLOCK]


def test_aborts_free_their_blocks_and_eviction_keeps_results_right(
    tiny_model: ServingGlm4,
) -> None:
    engine = make_engine(tiny_model, total_tokens=12 * BLOCK, chunk=16)
    engine.add(gen("aborted", ids(40, seed=6), max_tokens=20))
    engine.step()  # 16 prompt tokens written: 2 blocks cached
    engine.abort("aborted")
    run(engine)
    assert engine.cache.blocks.cached_blocks == 2

    # 6 prompts of 40 tokens (5 blocks cached, 6 reserved each) in 12 blocks: older ones go
    prompts = [gen(f"p{i}", ids(40, seed=20 + i)) for i in range(6)]
    resent = [gen(f"again-{r.request_id}", r.input_ids) for r in (prompts[0], prompts[5])]
    on = one_by_one(engine, prompts + resent)
    off = one_by_one(make_engine(tiny_model, prefix_caching=False), prompts + resent)
    assert [t for t, _ in on] == [t for t, _ in off]
    assert [cached for _, cached in on[-2:]] == [0, 32]  # p0 was evicted, p5 was not
