"""Batched sampling: seeds, top-k/top-p, penalties, logprobs."""

from __future__ import annotations

import math

import torch

from services.decoder.sampling import Sampler, apply_penalties, mask_top_k_top_p
from services.decoder.types import SamplingParams

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
