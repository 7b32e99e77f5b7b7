"""The scheduler on its own: admission, cache blocks, preemption, aborts and the queue bound,
over block ids alone (no model, no tensors). Every sampled token is TOKEN, and requests ignore
EOS, so each runs exactly max_tokens steps once it has its first token."""

from __future__ import annotations

import collections
import subprocess
import sys

import pytest

from services.common.errors import InvalidInput, Overloaded, TooLarge
from services.decoder.block_pool import BlockPool
from services.decoder.params import StoppingParams
from services.decoder.prefix_cache import block_hashes
from services.decoder.scheduler import EngineLimits, Plan, Scheduler
from services.decoder.sequence import Pending, Sequence
from services.decoder.types import FinishReason, GenerateOutput, GenerateRequest

BLOCK = 4
TOKEN = 7
EOS = 2


def scheduler(
    blocks: int = 16, rows: int = 4, max_model_len: int = 32, chunk: int = 64, waiting: int = 8
) -> Scheduler:
    limits = EngineLimits(rows, max_model_len, chunk, waiting)
    return Scheduler(limits, BlockPool(blocks, prefix_caching=True), BLOCK, frozenset({EOS}))


def pending(
    rid: str,
    prompt_len: int,
    max_tokens: int = 4,
    first: int = 10,
    stop_token_ids: tuple[int, ...] = (),
    ignore_eos: bool = True,
) -> Pending:
    """A prompt of consecutive ids from ``first``: the same ``first`` shares a prefix."""
    ids = tuple(range(first, first + prompt_len))
    stop = StoppingParams(max_tokens, stop_token_ids, ignore_eos)
    request = GenerateRequest(rid, ids, stopping=stop)
    return Pending(request, block_hashes(request, BLOCK))


def step(s: Scheduler, token: int = TOKEN) -> tuple[Plan, list[GenerateOutput]]:
    """One engine step, with ``token`` standing in for what the model would sample."""
    plan = s.schedule()
    sampled, _ = plan.to_sample()
    return plan, s.postprocess(plan, [token] * len(sampled), [None] * len(sampled))


def ids(seqs: list[Sequence]) -> list[str]:
    return [s.request_id for s in seqs]


def prefills(plan: Plan) -> list[tuple[str, int]]:
    return [(s.request_id, n) for s, n in plan.prefills]


def test_admission_is_fifo_and_keeps_a_spare_block_per_running_request() -> None:
    s = scheduler(blocks=5)
    s.add(pending("a", 8, max_tokens=1))  # 2 blocks
    s.add(pending("b", 12, first=50))  # 3 blocks: they are free, but a needs a spare one
    s.add(pending("c", 1, first=90))  # would fit, but waits behind b
    plan, outputs = step(s)
    assert prefills(plan) == [("a", 8)]
    assert [r.request_id for r in s.waiting] == ["b", "c"]
    assert [o.finish_reason for o in outputs] == [FinishReason.LENGTH]  # a is done: 5 free
    plan, _ = step(s)
    assert prefills(plan) == [("b", 12), ("c", 1)]  # c: 1 block + 1 spare for b = the 2 left


def test_rows_bound_the_running_batch() -> None:
    s = scheduler(rows=1)
    s.add(pending("a", 4))
    s.add(pending("b", 4, first=50))
    assert prefills(step(s)[0]) == [("a", 4)]
    assert (s.stats().running, s.stats().waiting) == (1, 1)


def test_a_prompt_shares_the_cached_blocks_of_its_prefix() -> None:
    s = scheduler()
    s.add(pending("a", 9))  # two full blocks and one token
    step(s)
    s.add(pending("b", 9))  # the same prompt
    plan, outputs = step(s)
    a, b = s.running
    assert b.blocks[:2] == a.blocks[:2] and b.blocks[2] != a.blocks[2]
    assert prefills(plan) == [("b", 1)] and ids(plan.decodes) == ["a"]
    assert [(o.request_id, o.cached_tokens) for o in outputs] == [("b", 8), ("a", 0)]


def test_a_block_aligned_prompt_still_computes_its_last_block() -> None:
    s = scheduler()
    s.add(pending("a", 8))
    step(s)
    s.add(pending("b", 8))
    assert prefills(step(s)[0]) == [("b", 4)]  # its last token's logits pick the first token


def test_blocks_are_taken_as_decodes_fill_them() -> None:
    s = scheduler()
    s.add(pending("a", 4, max_tokens=10))
    held, grown = [], []
    for _ in range(6):
        plan, _ = step(s)
        held.append(len(s.running[0].blocks))
        grown.append([(seq.request_id, first) for seq, first in plan.new_blocks])
    assert held == [1, 2, 2, 2, 2, 3]  # the prompt's block, then one per 4 tokens written
    assert grown == [[("a", 0)], [("a", 1)], [], [], [], [("a", 2)]]  # for the runner to map


def test_the_newest_is_preempted_and_readmitted_before_waiting_requests() -> None:
    s = scheduler(blocks=4)
    s.add(pending("old", 4, max_tokens=12))
    s.add(pending("new", 4, max_tokens=12, first=50))
    generated = collections.Counter[str]()
    plans = []
    while s.has_work():
        plan, outputs = step(s)
        plans.append(plan)
        generated.update(o.request_id for o in outputs)
        if len(plans) == 1:
            s.add(pending("late", 1, first=90))  # 1 block + 2 spare: more than the 2 left
    # steps 2-5 decode both (their second blocks take the last free ones); at step 6 old's
    # second block is full and new gives its blocks back, keeping its output; old never waits
    assert [ids(p.decodes) for p in plans[1:6]] == [["old", "new"]] * 4 + [["old"]]
    assert [ids(p.preempted) for p in plans] == [[]] * 5 + [["new"]] + [[]] * (len(plans) - 6)
    # new recomputes its context (4 prompt + 4 generated, the 5th is fed next) before late starts
    assert [prefills(p) for p in plans if p.prefills][1:] == [[("new", 8), ("late", 1)]]
    assert generated == {"old": 12, "new": 12, "late": 4}
    assert s.stats().free_cache_tokens == s.stats().total_cache_tokens
    assert sorted(s.free_rows) == [0, 1, 2, 3]


def test_aborts_free_waiting_running_and_preempted_requests() -> None:
    s = scheduler(blocks=4)
    s.add(pending("old", 4, max_tokens=12))
    s.add(pending("new", 4, max_tokens=12, first=50))
    step(s)
    s.add(pending("late", 1, first=90))
    while not s.preempted:
        step(s)
    for rid in ("late", "old", "new"):  # waiting, running, preempted
        s.abort(rid)
    assert s.active_ids() == set() and not s.waiting  # a waiting one goes at once
    s.add(pending("old", 4))  # an aborted id may be reused right away
    plan, _ = step(s)  # the others' rows and blocks are freed at the start of the next step
    assert prefills(plan) == [("old", 4)] and plan.admitted == list(s.running)
    assert (s.stats().running, len(s.free_rows)) == (1, 3)
    s.abort("old")
    step(s)
    assert not s.has_work() and sorted(s.free_rows) == [0, 1, 2, 3]
    assert s.stats().free_cache_tokens == s.stats().total_cache_tokens


def test_stop_tokens_and_eos_finish_a_request() -> None:
    s = scheduler()
    s.add(pending("stop", 4, stop_token_ids=(TOKEN,)))
    s.add(pending("eos", 4, first=50, ignore_eos=False))
    s.add(pending("ignores-eos", 4, first=90))
    _, outputs = step(s, token=TOKEN)
    _, more = step(s, token=EOS)
    assert [(o.request_id, o.finish_reason) for o in outputs + more] == [
        ("stop", FinishReason.STOP), ("eos", None), ("ignores-eos", None),
        ("eos", FinishReason.STOP), ("ignores-eos", None),
    ]  # fmt: skip


def test_add_rejects_what_could_never_run() -> None:
    s = scheduler(blocks=4, max_model_len=32)
    with pytest.raises(TooLarge, match="max_model_len"):
        s.add(pending("long-prompt", 32))
    with pytest.raises(TooLarge, match="whole KV cache"):
        s.add(pending("long-completion", 8, max_tokens=16))  # 24 tokens > 4 blocks of 4
    s.add(pending("fits", 8, max_tokens=8))
    with pytest.raises(InvalidInput, match="already running"):
        s.add(pending("fits", 8, max_tokens=8))
    assert [r.request_id for r in s.waiting] == ["fits"]


def test_a_full_waiting_queue_refuses_new_requests_until_it_drains() -> None:
    s = scheduler(rows=1, waiting=2)
    s.add(pending("a", 4))
    s.add(pending("b", 4, first=50))
    with pytest.raises(Overloaded, match="2 requests are already waiting"):
        s.add(pending("c", 4, first=90))
    step(s)  # a takes the row
    s.add(pending("c", 4, first=90))
    assert [r.request_id for r in s.waiting] == ["b", "c"]


def test_the_scheduler_imports_without_torch() -> None:
    """Pure Python: the scheduler, its sequences, block pool and types load no torch."""
    probe = (
        "import sys, services.decoder.scheduler, services.decoder.block_pool; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
