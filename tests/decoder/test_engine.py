"""The engine's scheduling and cache bookkeeping, driven step by step without a network."""

from __future__ import annotations

import pytest
import torch
from transformers import Glm4ForCausalLM

from services.common.errors import InvalidInput, TooLarge
from services.decoder.model import Glm4ForCausalLM as ServingGlm4
from services.decoder.params import StoppingParams
from services.decoder.types import FinishReason, GenerateRequest, MultimodalSegment
from tests.decoder.engines import make_engine, request, run_all, tokens


def test_requests_join_and_leave_the_batch_at_every_step(tiny_model: ServingGlm4) -> None:
    engine = make_engine(tiny_model)
    engine.add(request("a", 4, max_tokens=3))
    assert [o.request_id for o in engine.step()] == ["a"]
    engine.add(request("b", 6, max_tokens=3, seed=1))
    assert sorted(o.request_id for o in engine.step()) == ["a", "b"]
    last = engine.step()
    assert {o.request_id: o.finish_reason for o in last} == {"a": FinishReason.LENGTH, "b": None}
    # a left in the step that finished it: its cache is back before the next step runs
    assert engine.stats().running == 1
    # blocks are taken as tokens arrive: b holds its 6 prompt tokens and its first decoded one
    b_cache = engine.cache.blocks_for(6 + 1) * engine.cache.block_size
    assert engine.stats().free_cache_tokens == engine.cache.total_tokens - b_cache
    assert [o.finish_reason for o in engine.step()] == [FinishReason.LENGTH]
    assert not engine.has_work()
    assert engine.stats().free_cache_tokens == engine.cache.total_tokens


def test_long_prompts_prefill_in_chunks_while_others_keep_decoding(tiny_model: ServingGlm4) -> None:
    alone = make_engine(tiny_model, chunk=512)
    alone.add(request("long", 150, max_tokens=5, seed=2))
    expected = tokens(run_all(alone)["long"])

    engine = make_engine(tiny_model, chunk=64)
    engine.add(request("short", 4, max_tokens=20))
    engine.step()
    engine.add(request("long", 150, max_tokens=5, seed=2))
    for _ in range(2):  # 150 prompt tokens = chunks of 64, 64, 22: no token for "long" yet
        assert [o.request_id for o in engine.step()] == ["short"]
    assert sorted(o.request_id for o in engine.step()) == ["long", "short"]
    assert tokens(run_all(engine)["long"]) == expected[1:]


def test_what_does_not_fit_now_waits_and_what_never_fits_is_rejected(
    tiny_model: ServingGlm4,
) -> None:
    engine = make_engine(tiny_model, total_tokens=64, max_model_len=64, block_size=8)
    engine.add(request("first", 40, max_tokens=10))  # 5 of the 8 blocks
    # 4 blocks, plus a spare one for the running request: not now
    engine.add(request("second", 30, max_tokens=10, seed=1))
    engine.step()
    assert (engine.stats().running, engine.stats().waiting) == (1, 1)
    outputs = run_all(engine)
    assert len(tokens(outputs["second"])) == 10
    assert engine.stats().free_cache_tokens == 64

    with pytest.raises(TooLarge):
        engine.add(request("prompt-too-long", 64))
    small_cache = make_engine(tiny_model, total_tokens=64, max_model_len=256, block_size=8)
    with pytest.raises(TooLarge):
        small_cache.add(request("needs-more-than-the-cache", 40, max_tokens=40))
    with pytest.raises(InvalidInput):
        engine.add(GenerateRequest("bad-id", (5, 4096)))


def test_a_full_batch_queues_the_rest(tiny_model: ServingGlm4) -> None:
    engine = make_engine(tiny_model, max_running=2)
    for i in range(5):
        engine.add(request(f"r{i}", 5, max_tokens=4, seed=i))
    engine.step()
    assert (engine.stats().running, engine.stats().waiting) == (2, 3)
    produced = {"r0": 1, "r1": 1}
    while engine.has_work():
        for out in engine.step():
            produced[out.request_id] = produced.get(out.request_id, 0) + 1
        assert engine.stats().running <= 2
    assert produced == {f"r{i}": 4 for i in range(5)}
    assert engine.stats().free_cache_tokens == engine.cache.total_tokens


def test_abort_frees_the_cache_in_the_next_step(tiny_model: ServingGlm4) -> None:
    engine = make_engine(tiny_model, max_running=1)
    engine.add(request("running", 10, max_tokens=100))
    engine.add(request("waiting", 10, max_tokens=100))
    engine.step()
    engine.abort("waiting")
    assert engine.stats().waiting == 0
    engine.abort("running")
    engine.add(request("running", 10, max_tokens=2))  # the id is free again at once
    engine.step()
    outputs = run_all(engine)
    assert len(tokens(outputs["running"])) == 1
    assert engine.stats() == engine.stats().__class__(
        0, 0, engine.cache.total_tokens, engine.cache.total_tokens
    )


def test_greedy_output_is_the_same_alone_and_in_a_batch_of_16(tiny_model: ServingGlm4) -> None:
    requests = [request(f"r{i}", 3 + 7 * i, max_tokens=12, seed=i) for i in range(16)]
    batched = make_engine(tiny_model, chunk=48)
    for r in requests:
        batched.add(r)
    together = run_all(batched)
    for r in requests:
        alone = make_engine(tiny_model)
        alone.add(r)
        assert tokens(run_all(alone)[r.request_id]) == tokens(together[r.request_id]), r.request_id


def test_stop_token_ids_eos_and_the_context_length_end_a_request(tiny_model: ServingGlm4) -> None:
    engine = make_engine(tiny_model)
    engine.add(request("free", 6, max_tokens=6))
    generated = tokens(run_all(engine)["free"])
    stop = generated[2]
    expected = generated[: generated.index(stop) + 1]  # the stop token is the last one sent

    engine.add(request("stop-id", 6, max_tokens=6, stop_token_ids=(stop,)))
    by_stop_id = run_all(engine)["stop-id"]
    eos_engine = make_engine(tiny_model, eos=(stop,))
    eos_engine.add(GenerateRequest("eos", request("", 6).input_ids, stopping=StoppingParams(6)))
    eos_engine.add(request("ignore-eos", 6, max_tokens=6))
    finished = run_all(eos_engine)
    for outputs in (by_stop_id, finished["eos"]):
        assert tokens(outputs) == expected
        assert outputs[-1].finish_reason == FinishReason.STOP
        assert outputs[-1].completion_tokens == len(expected)
    assert tokens(finished["ignore-eos"]) == generated

    engine.add(request("context", 250, max_tokens=100))  # max_model_len is 256
    at_limit = run_all(engine)["context"]
    assert (len(at_limit), at_limit[-1].finish_reason) == (6, FinishReason.LENGTH)


def test_multimodal_segments_replace_the_placeholder_embeddings(
    tiny_checkpoint, tiny_model: ServingGlm4
) -> None:
    ids = list(range(10, 22))
    segment = torch.randn(
        5, tiny_model.config.hidden_size, generator=torch.Generator().manual_seed(4)
    )
    engine = make_engine(tiny_model, chunk=5)  # the segment straddles two prefill chunks
    engine.add(
        GenerateRequest(
            "mm", tuple(ids), segments=(MultimodalSegment(3, segment),),
            stopping=StoppingParams(8, ignore_eos=True),
        )
    )  # fmt: skip
    ours = tokens(run_all(engine)["mm"])

    reference = Glm4ForCausalLM.from_pretrained(tiny_checkpoint, dtype=torch.float32).eval()
    with torch.no_grad():
        embeds = reference.get_input_embeddings()(torch.tensor(ids))
        embeds[3:8] = segment
        expected = reference.generate(
            inputs_embeds=embeds[None], max_new_tokens=8, min_new_tokens=8, do_sample=False
        )
    assert ours == expected[0].tolist()

    with pytest.raises(InvalidInput, match="hidden size"):
        engine.add(
            GenerateRequest(
                "wide", tuple(ids), segments=(MultimodalSegment(0, torch.zeros(2, 65)),)
            )
        )
