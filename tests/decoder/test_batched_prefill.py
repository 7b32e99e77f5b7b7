"""Prefill spans batched into one attention call attend exactly as each span alone would."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from services.decoder.kv_cache import (
    MAX_GROUP_CELLS,
    ForwardBatch,
    KVCache,
    PrefillGroup,
    PrefillSpan,
    group_spans,
)
from services.decoder.model import Glm4ForCausalLM as ServingGlm4

REGION = 128  # sequence i owns cache slots [i * REGION, (i + 1) * REGION)
Prefill = tuple[int, int, int]  # (sequence, tokens already cached, new tokens)
Decode = tuple[int, int]  # (sequence, tokens already cached)


def slots(seq: int, start: int, end: int) -> torch.Tensor:
    return torch.arange(seq * REGION + start, seq * REGION + end)


def span(start: int, n: int, context: int) -> PrefillSpan:
    return PrefillSpan(start, start + n, context, torch.arange(context + n))


def forward_batch(prefills: list[Prefill], decodes: list[Decode]) -> ForwardBatch:
    spans, writes, start = [], [], 0
    for seq, context, n in prefills:
        spans.append(PrefillSpan(start, start + n, context, slots(seq, 0, context + n)))
        writes.append(slots(seq, context, context + n))
        start += n
    kv_slots = mask = None
    if decodes:
        longest = max(length for _, length in decodes) + 1
        kv_slots = torch.stack([slots(seq, 0, longest) for seq, _ in decodes])
        lengths = torch.tensor([length for _, length in decodes])
        mask = (torch.arange(longest) <= lengths[:, None])[:, None, None, :]
        writes.append(torch.stack([slots(seq, n, n + 1)[0] for seq, n in decodes]))
    return ForwardBatch(torch.cat(writes), tuple(spans), start, kv_slots, mask)


def run(
    model: ServingGlm4, cache: KVCache, prefills: list[Prefill], decodes: list[Decode]
) -> torch.Tensor:
    """Logits of one step; every request's new ids and positions follow from its seed."""
    ids, positions = [], []
    for seq, context, n in prefills:
        ids.append(torch.randint(3, 128, (n,), generator=torch.Generator().manual_seed(seq)))
        positions.append(torch.arange(context, context + n))
    for seq, length in decodes:
        ids.append(torch.randint(3, 128, (1,), generator=torch.Generator().manual_seed(seq)))
        positions.append(torch.tensor([length]))
    batch = forward_batch(prefills, decodes)
    with torch.inference_mode():
        return model.logits(model(torch.cat(ids), torch.cat(positions), batch, cache))


@pytest.fixture(scope="module", params=[torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def model(request: pytest.FixtureRequest, tiny_checkpoint: Path) -> ServingGlm4:
    return ServingGlm4.from_pretrained(tiny_checkpoint, request.param, torch.device("cpu"))


def cached_contexts(model: ServingGlm4, sequences: int) -> KVCache:
    """A cache whose every slot holds K/V already: whatever context a request has is cached."""
    c = model.config
    cache = KVCache(
        num_layers=c.num_hidden_layers, num_kv_heads=c.num_key_value_heads, head_dim=c.head_dim,
        num_blocks=sequences, block_size=REGION, dtype=model.dtype, device=torch.device("cpu"),
    )  # fmt: skip
    cache.kv.copy_(torch.randn(cache.kv.shape, generator=torch.Generator().manual_seed(9)))
    return cache


STEPS = {
    "equal tails": ([(i, 40, 3) for i in range(6)], []),
    "different contexts and lengths": ([(0, 30, 5), (1, 26, 7), (2, 20, 6)], []),
    "context 0 beside cached contexts": ([(0, 0, 6), (1, 10, 6), (2, 4, 5)], []),
    "a long chunk and short tails": ([(0, 0, 40)] + [(i, 30, 3) for i in range(1, 6)], []),
    "prefills and decodes": ([(0, 12, 4), (1, 9, 4)], [(2, 17), (3, 5)]),
}


@pytest.mark.parametrize("name", STEPS)
def test_a_batched_step_gives_each_request_the_logits_it_gets_alone(
    model: ServingGlm4, name: str
) -> None:
    prefills, decodes = STEPS[name]
    batched = run(model, cached_contexts(model, 6), prefills, decodes)
    cache = cached_contexts(model, 6)
    alone = torch.cat(
        [run(model, cache, [p], []) for p in prefills]
        + [run(model, cache, [], [d]) for d in decodes]
    )
    assert torch.isfinite(batched).all()
    tolerance = 1e-5 if model.dtype == torch.float32 else 1e-2
    torch.testing.assert_close(batched, alone, atol=tolerance, rtol=0)


def test_every_multi_span_step_above_runs_at_least_one_batched_group() -> None:
    for prefills, decodes in STEPS.values():
        batch = forward_batch(prefills, decodes).for_attention(torch.float32, 2, 10_000)
        assert any(isinstance(g, PrefillGroup) for g in batch.prefill_groups)


def test_equal_tails_are_one_group_and_a_long_chunk_stays_alone() -> None:
    tails = tuple(span(17 * i, 17, 848) for i in range(16))
    assert group_spans(tails) == [tails]
    chunk = span(272, 512, 0)
    assert group_spans((*tails, chunk)) == [tails, (chunk,)]
    assert group_spans((chunk,)) == [(chunk,)]
    assert group_spans(()) == []


def test_a_group_stays_within_a_bounded_bias() -> None:
    long_tails = tuple(span(17 * i, 17, 40_000) for i in range(16))  # 16 x 17 x 40017 cells
    groups = group_spans(long_tails)
    assert sorted(s.start for g in groups for s in g) == [s.start for s in long_tails]
    assert all(len(g) * 17 * 40_017 <= MAX_GROUP_CELLS for g in groups)
    assert len(groups) == 6  # as few as that allows: 3 spans a group, one left over
    chunks = (span(0, 2048, 8192), span(2048, 2048, 8192))  # each alone past the bound
    assert group_spans(chunks) == [chunks[:1], chunks[1:]]


def test_a_group_pads_rows_and_columns_and_every_row_attends_somewhere() -> None:
    first, second = span(0, 1, 2), span(1, 2, 0)  # 2 cached + 1 new; 2 new
    group = PrefillGroup.of((first, second), torch.float32, query_group=2, scratch=99)
    assert group.rows == 2
    assert group.query_rows.tolist() == [0, 0, 1, 2]  # the first span's padded row repeats row 0
    assert group.kept.tolist() == [0, 2, 3] and group.packed_rows.tolist() == [0, 1, 2]
    assert group.kv_slots.tolist() == [[0, 1, 2], [0, 1, 99]]  # padded with the scratch slot
    attend = group.bias == 0
    assert attend.shape == (2, 1, 4, 3)  # each chunk row twice: two query heads per KV head
    assert attend[0, 0].tolist() == [[True, True, True]] * 4
    assert attend[1, 0].tolist() == [[True, False, False]] * 2 + [[True, True, False]] * 2
    assert torch.isneginf(group.bias[~attend]).all()
