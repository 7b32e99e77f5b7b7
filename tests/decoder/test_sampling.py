"""Batched sampling: seeds, top-k/top-p, min-p, penalties, logit bias, logprobs."""

from __future__ import annotations

import math

import pytest
import torch

from autoglm.v1 import decoder_pb2
from services.common.errors import InvalidInput
from services.decoder.params import SamplingParams
from services.decoder.sampling import (
    Sampler,
    apply_penalties,
    apply_repetition_penalty,
    argmax_rows,
    mask_min_p,
    mask_top_k_top_p,
)

CPU = torch.device("cpu")
VOCAB = 50


def logits_for(rows: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, VOCAB, generator=torch.Generator().manual_seed(seed))


def draws(sampler: Sampler, logits: torch.Tensor, rows: list[int], steps: int) -> list[list[int]]:
    return [sampler.sample(logits, rows)[0] for _ in range(steps)]


def test_a_seeded_request_repeats_itself_whatever_shares_its_batch() -> None:
    seeded = SamplingParams(temperature=1.0, seed=1234)
    alone = Sampler(4, VOCAB, CPU)
    alone.assign(0, seeded)
    logits = logits_for(1)
    expected = [d[0] for d in draws(alone, logits, [0], 20)]

    batched = Sampler(4, VOCAB, CPU)
    batched.assign(2, seeded)
    batched.assign(0, SamplingParams(temperature=1.0))
    batched.assign(1, SamplingParams(temperature=0.7, seed=99))
    together = draws(batched, torch.cat([logits_for(2, seed=5), logits]), [0, 1, 2], 20)
    assert [d[2] for d in together] == expected
    assert len(set(expected)) > 1  # it really samples

    other = Sampler(1, VOCAB, CPU)
    other.assign(0, SamplingParams(temperature=1.0, seed=4321))
    assert [d[0] for d in draws(other, logits, [0], 20)] != expected


def test_sampling_follows_the_softmax_of_logits_over_temperature() -> None:
    sampler = Sampler(1, 4, CPU)
    sampler.assign(0, SamplingParams(temperature=2.0, seed=0))
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    counts = torch.zeros(4)
    for _ in range(4000):
        counts[sampler.sample(logits, [0])[0][0]] += 1
    expected = (logits[0] / 2.0).softmax(-1)
    assert torch.allclose(counts / 4000, expected, atol=0.03)


def test_top_k_and_top_p_keep_only_the_most_likely_tokens() -> None:
    probs = torch.tensor([[0.5, 0.05, 0.3, 0.15], [0.5, 0.05, 0.3, 0.15], [0.5, 0.05, 0.3, 0.15]])
    masked = mask_top_k_top_p(
        probs.log(), top_k=torch.tensor([2, 0, 0]), top_p=torch.tensor([1.0, 0.7, 0.81])
    )
    kept = torch.isfinite(masked)
    assert kept.tolist() == [
        [True, False, True, False],  # top_k 2
        [True, False, True, False],  # 0.5 + 0.3 reaches 0.7
        [True, False, True, True],  # 0.8 < 0.81: the next most likely joins
    ]
    torch.testing.assert_close(masked[kept], probs.log()[kept])

    sampler = Sampler(2, VOCAB, CPU)
    sampler.assign(0, SamplingParams(temperature=1.5, top_k=1, seed=3))
    sampler.assign(1, SamplingParams(temperature=1.5, top_p=1e-6, seed=4))
    logits = logits_for(2)
    assert draws(sampler, logits, [0, 1], 10) == [logits.argmax(-1).tolist()] * 10


def test_presence_and_frequency_penalties_push_away_from_generated_tokens() -> None:
    logits = torch.tensor([[3.0, 2.5, 0.0]])
    counts = torch.tensor([[2.0, 0.0, 1.0]])
    penalized = apply_penalties(logits, counts, torch.tensor([0.5]), torch.tensor([0.25]))
    torch.testing.assert_close(penalized, torch.tensor([[3.0 - 0.5 - 0.5, 2.5, -0.25 - 0.5]]))

    sampler = Sampler(2, 3, CPU)
    sampler.assign(0, SamplingParams(presence_penalty=1.0))  # greedy, penalized
    sampler.assign(1, SamplingParams())  # greedy, not penalized
    steps = draws(sampler, torch.cat([logits, logits]), [0, 1], 3)
    assert [s[0] for s in steps] == [0, 1, 0]  # 3-1 < 2.5, then 2.5-1 < 2: back to 0
    assert [s[1] for s in steps] == [0, 0, 0]

    sampler.assign(0, SamplingParams(presence_penalty=1.0))  # a new request starts afresh
    assert sampler.sample(logits, [0])[0] == [0]


def test_logprobs_are_the_models_log_softmax_with_the_top_alternatives() -> None:
    sampler = Sampler(3, VOCAB, CPU)
    sampler.assign(0, SamplingParams(logprobs=True, top_logprobs=3))
    sampler.assign(1, SamplingParams())
    sampler.assign(2, SamplingParams(temperature=5.0, logprobs=True, seed=0))
    logits = logits_for(3)
    token_ids, logprobs = sampler.sample(logits, [0, 1, 2])
    reference = logits.log_softmax(-1)

    first = logprobs[0]
    assert first is not None and first.token_id == token_ids[0]
    assert math.isclose(first.logprob, reference[0, token_ids[0]].item(), abs_tol=1e-6)
    top_values, top_ids = reference[0].topk(3)
    assert [t for t, _ in first.top_logprobs] == top_ids.tolist()
    assert [lp for _, lp in first.top_logprobs] == top_values.tolist()

    assert logprobs[1] is None
    third = logprobs[2]
    assert third is not None and third.top_logprobs == ()
    assert math.isclose(third.logprob, reference[2, token_ids[2]].item(), abs_tol=1e-6)


def test_a_plus_100_logit_bias_selects_its_token_every_step() -> None:
    sampler = Sampler(2, VOCAB, CPU)
    sampler.assign(0, SamplingParams(temperature=1.0, logit_bias=((17, 100.0),)))
    sampler.assign(1, SamplingParams(logit_bias=((3, 250.0),)))  # clamped to 100, still wins
    for step in range(30):
        assert sampler.sample(logits_for(2, seed=step) * 5, [0, 1])[0] == [17, 3]


def test_logit_bias_is_clamped_and_round_trips() -> None:
    params = SamplingParams(logit_bias=((9, 300.0), (2, -1e9)), min_p=0.25, repetition_penalty=1.5)
    assert params.logit_bias == ((2, -100.0), (9, 100.0))
    assert SamplingParams.from_pb(params.to_pb()) == params
    assert SamplingParams.from_pb(decoder_pb2.SamplingParams()).repetition_penalty == 1.0


@pytest.mark.parametrize(
    "fields",
    [{"min_p": -0.1}, {"min_p": 1.5}, {"repetition_penalty": 0.0}, {"repetition_penalty": 2.5},
     {"logit_bias": ((-1, 1.0),)}],
)  # fmt: skip
def test_out_of_bounds_parameters_are_invalid_input(fields: dict) -> None:
    with pytest.raises(InvalidInput):
        SamplingParams(**fields)


def reference_min_p(logits: list[float], min_p: float) -> set[int]:
    probs = [math.exp(x) for x in logits]
    top = max(probs)
    return {i for i, p in enumerate(probs) if p >= min_p * top}


def test_min_p_keeps_the_tokens_at_least_min_p_times_as_likely_as_the_top_one() -> None:
    logits = logits_for(3, seed=7) * 2
    min_p = torch.tensor([0.0, 0.1, 0.5])
    kept = torch.isfinite(mask_min_p(logits, min_p))
    for row in range(3):
        expected = reference_min_p(logits[row].tolist(), float(min_p[row]))
        assert set(kept[row].nonzero().flatten().tolist()) == expected
    sampler = Sampler(1, VOCAB, CPU)
    sampler.assign(0, SamplingParams(temperature=1.0, min_p=0.3, seed=3))
    flat = logits_for(1, seed=8)
    drawn = {sampler.sample(flat, [0])[0][0] for _ in range(200)}
    assert drawn <= reference_min_p(flat[0].tolist(), 0.3) and len(drawn) > 1


def reference_repetition(logits: list[float], seen: set[int], penalty: float) -> list[float]:
    return [
        (x / penalty if x > 0 else x * penalty) if i in seen else x for i, x in enumerate(logits)
    ]


def test_repetition_penalty_is_vllms_over_prompt_and_output_tokens() -> None:
    logits = logits_for(1, seed=11)
    seen = torch.zeros(1, VOCAB, dtype=torch.bool)
    seen[0, [1, 5, 8, 20]] = True
    expected = reference_repetition(logits[0].tolist(), {1, 5, 8, 20}, 1.5)
    got = apply_repetition_penalty(logits, seen, torch.tensor([1.5]))[0].tolist()
    assert got == pytest.approx(expected)

    # in the sampler: the prompt's tokens and each generated one, step after step
    prompt, penalty = (4, 9), 1.8
    sampler = Sampler(1, VOCAB, CPU)
    sampler.assign(0, SamplingParams(repetition_penalty=penalty), prompt)
    seen_ids, fixed = set(prompt), logits_for(1, seed=12)
    for _ in range(10):
        penalized = reference_repetition(fixed[0].tolist(), seen_ids, penalty)
        token = sampler.sample(fixed, [0])[0][0]
        assert token == max(range(VOCAB), key=penalized.__getitem__)
        seen_ids.add(token)


@pytest.mark.parametrize("vocab", [32000, 151552, 4096 + 32, 50])
@pytest.mark.parametrize("rows", [1, 16])
def test_argmax_rows_equals_argmax_with_ties_minus_inf_and_nan(vocab: int, rows: int) -> None:
    generator = torch.Generator().manual_seed(vocab + rows)
    scores = torch.randn(rows, vocab, generator=generator)
    scores[0, vocab // 3] = scores[0, vocab - 1] = 100.0  # a tie: the first one wins
    if rows > 1:
        scores[1] = float("-inf")  # a row masked out entirely: index 0
        scores[2, 5:] = float("-inf")
        scores[3, [7, vocab // 2]] = float("nan")  # argmax picks the first NaN
        scores[4] = scores[4].round()  # many ties among the largest values
    assert torch.equal(argmax_rows(scores), scores.argmax(dim=-1))
