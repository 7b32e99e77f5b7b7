"""Blocks taken as tokens arrive, and preemption when the cache runs out: the newest request
gives its blocks back, keeps its row, output and sampler state, and resumes by recomputing its
context, producing exactly the tokens it would have produced alone."""

from __future__ import annotations

from services.decoder.model import Glm4ForCausalLM as ServingGlm4
from services.decoder.params import SamplingParams
from tests.decoder.engines import make_engine, request, run_all, tokens

# 8 blocks of 8 tokens; each request below needs 12 + 30 = 42 tokens (6 blocks) by its end
SMALL_CACHE = {"total_tokens": 64, "max_model_len": 64, "block_size": 8}
SAMPLED = SamplingParams(temperature=1.0, seed=7, frequency_penalty=0.8, top_k=20)


def two_requests() -> list:
    return [
        request("old", 12, max_tokens=30, seed=1),
        request("new", 12, max_tokens=30, seed=2, sampling=SAMPLED),  # seeded, penalised
    ]


def test_requests_start_together_and_the_newest_is_preempted_then_resumed(
    tiny_model: ServingGlm4,
) -> None:
    alone = {}
    for r in two_requests():
        engine = make_engine(tiny_model, **SMALL_CACHE)
        engine.add(r)
        alone[r.request_id] = tokens(run_all(engine)[r.request_id])

    engine = make_engine(tiny_model, **SMALL_CACHE)
    for r in two_requests():
        engine.add(r)
    outputs: dict[str, list] = {}
    preempted_at = None
    while engine.has_work():
        for out in engine.step():
            outputs.setdefault(out.request_id, []).append(out)
        # reserving prompt + max_tokens up front would have run them one at a time
        assert engine.stats().waiting == 0
        if engine.scheduler.preempted and preempted_at is None:
            preempted_at = len(outputs["new"])
            assert [s.request_id for s in engine.scheduler.preempted] == ["new"]  # never the oldest
    assert preempted_at is not None, "the cache never ran out: the test lost its point"
    assert 0 < preempted_at < 30
    assert {rid: tokens(outs) for rid, outs in outputs.items()} == alone
    assert outputs["new"][-1].completion_tokens == 30
    assert engine.stats().preemptions >= 1
    assert engine.stats().free_cache_tokens == engine.cache.total_tokens


def test_a_preempted_request_can_be_cancelled(tiny_model: ServingGlm4) -> None:
    engine = make_engine(tiny_model, **SMALL_CACHE)
    for r in two_requests():
        engine.add(r)
    before = 0
    while not engine.scheduler.preempted:
        before += sum(out.request_id == "old" for out in engine.step())
    engine.abort("new")
    engine.add(request("new", 4, max_tokens=2))  # the id is free again at once
    outputs = run_all(engine)
    assert before + len(tokens(outputs["old"])) == 30 and len(tokens(outputs["new"])) == 2
    stats = engine.stats()
    assert (stats.running, stats.waiting, stats.free_cache_tokens) == (0, 0, 64)
    assert sorted(engine.scheduler.free_rows) == list(range(16))
