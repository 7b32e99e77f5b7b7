"""Which requests run in each engine step: pure Python over sequences and cache block ids.

``schedule()`` drops aborted requests, gives each decoding request room for its next token,
admits preempted and then waiting requests while rows and cache allow, and gives context chunks
a token budget (``prefill_chunk_tokens``, so a long prompt never stalls the running requests for
more than one chunk). Its ``Plan`` is what the model runner computes (model_runner.py); the
tokens sampled come back to ``postprocess()``, which records the progress, checks the stop
conditions and frees finished requests in the same step. Driven from one thread; nothing here
is thread-safe.

Cache policy (vLLM's): blocks are taken as they are needed, not reserved for a whole completion
up front, so requests that stop early never held cache they did not use. A request is admitted
once its prompt fits with one spare block per running request (so that admitting it does not
force a preemption at the very next step), and a decode takes a new block when its last one is
full. When none is free, the newest running request is preempted: its blocks go back (its
prompt blocks stay in the prefix cache), it keeps its row, output and sampler state, and it is
re-admitted before any waiting request, recomputing its context as a prefill. A request is
never preempted for a newer one, so the oldest always runs to its end, and ``add`` rejects at
once (TooLarge) a request that could not finish even alone in the whole cache, and (Overloaded)
one that finds ``max_waiting_requests`` already waiting.

Prefix caching (services.decoder.prefix_cache): an admitted request shares the cached blocks of
its longest known prefix of full prompt blocks and prefills only the rest, at least its last
token (whose logits pick the first token); its own prompt blocks join the cache once written.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import TYPE_CHECKING

from services.common.errors import InvalidInput, Overloaded, TooLarge
from services.decoder.sequence import Pending, Sequence
from services.decoder.types import FinishReason, GenerateOutput

if TYPE_CHECKING:
    from services.decoder.block_pool import BlockPool
    from services.decoder.types import GenerateRequest, TokenLogprob


@dataclasses.dataclass(frozen=True)
class EngineLimits:
    max_running_requests: int
    max_model_len: int
    prefill_chunk_tokens: int
    max_waiting_requests: int


@dataclasses.dataclass(frozen=True)
class EngineStats:
    running: int
    waiting: int
    free_cache_tokens: int
    total_cache_tokens: int
    preemptions: int = 0  # since start


@dataclasses.dataclass
class Plan:
    """What one step computes: context chunks (sequence, tokens), then decodes; and what the
    model runner must set up first."""

    prefills: list[tuple[Sequence, int]] = dataclasses.field(default_factory=list)
    decodes: list[Sequence] = dataclasses.field(default_factory=list)
    admitted: list[Sequence] = dataclasses.field(default_factory=list)  # new: rows to set up
    new_blocks: list[tuple[Sequence, int]] = dataclasses.field(default_factory=list)  # first
    preempted: list[Sequence] = dataclasses.field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.prefills or self.decodes)

    def to_sample(self) -> tuple[list[Sequence], list[int]]:
        """The requests that get a token this step and the packed index of the hidden state
        each samples from: the decodes, and the chunks that complete a prompt. A chunk that
        recomputes a preempted request's context samples nothing: its next token is known."""
        sampled, index, end = [], [], 0
        for seq, n in self.prefills:
            end += n
            if seq.cached + n == seq.context_len and not seq.output:
                sampled.append(seq)
                index.append(end - 1)
        sampled += self.decodes
        index += range(end, end + len(self.decodes))
        return sampled, index


class Scheduler:
    def __init__(
        self,
        limits: EngineLimits,
        blocks: BlockPool,
        block_size: int,
        eos_token_ids: frozenset[int] = frozenset(),
    ) -> None:
        self.limits = limits
        self.blocks = blocks
        self.block_size = block_size
        self.eos_token_ids = eos_token_ids
        self.free_rows = list(range(limits.max_running_requests - 1, -1, -1))
        self.waiting: collections.deque[Pending] = collections.deque()
        self.running: list[Sequence] = []  # in admission order: the newest is preempted first
        self.preempted: collections.deque[Sequence] = collections.deque()
        self.preemptions = 0
        self.aborting: list[Sequence] = []

    # -- the caller's side ------------------------------------------------------------------

    def validate(self, request: GenerateRequest) -> None:
        """Reject what could never run, even alone. Reads only fixed settings: any thread may."""
        n = len(request.input_ids)
        if n >= self.limits.max_model_len:
            raise TooLarge(
                f"the prompt has {n} tokens; max_model_len is {self.limits.max_model_len}, "
                "which leaves no room to generate"
            )
        if self._reservation(request) > self.total_tokens:
            raise TooLarge(
                f"the request needs more than the whole KV cache ({self.total_tokens} tokens)"
            )

    def add(self, pending: Pending) -> None:
        self.validate(pending.request)  # a request that can never fit would block the queue
        if pending.request_id in self.active_ids():
            raise InvalidInput(f"request id {pending.request_id!r} is already running")
        if len(self.waiting) >= self.limits.max_waiting_requests:
            raise Overloaded(
                f"{len(self.waiting)} requests are already waiting for the decoder; retry later"
            )
        self.waiting.append(pending)

    def abort(self, request_id: str) -> None:
        """Drop a request: at once if it is waiting; if it runs, its row and cache are freed at
        the start of the next step (so the id may be reused right away)."""
        self.waiting = collections.deque(r for r in self.waiting if r.request_id != request_id)
        self.aborting += [s for s in self._admitted() if s.request_id == request_id]

    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self.preempted)

    def active_ids(self) -> set[str]:
        """Every request waiting, running or preempted, and not being aborted."""
        running = {s.request_id for s in self._admitted() if s not in self.aborting}
        return running | {r.request_id for r in self.waiting}

    @property
    def total_tokens(self) -> int:
        return self.blocks.num_blocks * self.block_size

    def stats(self) -> EngineStats:
        return EngineStats(
            running=len(self.running) + len(self.preempted),  # both hold a row
            waiting=len(self.waiting),
            free_cache_tokens=self.blocks.free_blocks * self.block_size,
            total_cache_tokens=self.total_tokens,
            preemptions=self.preemptions,
        )

    # -- one step ---------------------------------------------------------------------------

    def schedule(self) -> Plan:
        self._drop_aborted()
        budget = self.limits.prefill_chunk_tokens
        plan = Plan()
        for seq in list(self.running):  # oldest first
            if seq not in self.running:
                continue  # preempted just now, to make room for an older one
            if seq.prefilled:
                if self._make_room(seq, plan):
                    plan.decodes.append(seq)
            elif budget > 0:
                n = min(budget, seq.context_len - seq.cached)
                plan.prefills.append((seq, n))
                budget -= n
        while budget > 0 and (self.preempted or (self.waiting and self.free_rows)):
            admitted = self._admit_next(plan)
            if admitted is None:
                break  # FIFO: later requests wait behind the first one that does not fit
            n = min(budget, admitted.context_len - admitted.cached)
            if n > 0:  # 0: a preempted request whose whole context was still cached decodes next
                plan.prefills.append((admitted, n))
                budget -= n
        return plan

    def postprocess(
        self, plan: Plan, tokens: list[int], logprobs: list[TokenLogprob | None]
    ) -> list[GenerateOutput]:
        """Record what the step computed and append the tokens sampled for
        ``plan.to_sample()``'s requests, finishing those that hit a stop condition."""
        sampled, _ = plan.to_sample()
        for seq, n in plan.prefills:
            seq.cached += n  # its full prompt blocks written so far, for later prompts to reuse:
            self.blocks.register(seq.blocks, seq.block_hashes[: seq.cached // self.block_size])
        for seq in plan.decodes:
            seq.cached += 1
        return [self._append(s, t, lp) for s, t, lp in zip(sampled, tokens, logprobs, strict=True)]

    def _append(self, seq: Sequence, token: int, logprob: TokenLogprob | None) -> GenerateOutput:
        seq.output.append(token)
        stopping = seq.request.stopping
        finish = None
        # a constrained request's EOS is its grammar's end: it stops even with ignore_eos
        honours_eos = not stopping.ignore_eos or seq.grammar is not None
        if token in stopping.stop_token_ids or (honours_eos and token in self.eos_token_ids):
            finish = FinishReason.STOP
        elif len(seq.output) >= seq.max_tokens:
            finish = FinishReason.LENGTH
        if finish is not None:
            self._release(seq)
        return GenerateOutput(
            request_id=seq.request_id,
            token_ids=(token,),
            logprobs=(logprob,) if logprob is not None else (),
            finish_reason=finish,
            prompt_tokens=seq.prompt_len,
            completion_tokens=len(seq.output),
            cached_tokens=seq.reused,
        )

    # -- bookkeeping ------------------------------------------------------------------------

    def _reservation(self, request: GenerateRequest) -> int:
        wanted = len(request.input_ids) + request.stopping.max_tokens
        return min(wanted, self.limits.max_model_len)

    def _blocks_for(self, n_tokens: int) -> int:
        return -(-n_tokens // self.block_size)

    def _admit_next(self, plan: Plan) -> Sequence | None:
        """Re-admit the first preempted request, else admit the first waiting one, if its
        context fits beside a spare block per running request, sharing its cached prefix."""
        resumed = self.preempted[0] if self.preempted else None
        if resumed is not None:
            hashes, context = resumed.block_hashes, resumed.context_len
        else:
            hashes, context = self.waiting[0].block_hashes, len(self.waiting[0].request.input_ids)
        # a fresh prompt keeps its last token to compute: its logits pick the first token
        computes = resumed is None or not resumed.output
        matched = self.blocks.match(hashes[: (context - computes) // self.block_size])
        fresh = self._blocks_for(context) - len(matched)
        if not self.blocks.can_allocate(matched, fresh + len(self.running)):
            return None
        blocks = self.blocks.allocate(matched, fresh)
        cached = len(matched) * self.block_size
        if resumed is not None:
            seq = self.preempted.popleft()
        else:  # reused: what the request reports as cached_tokens, from its first admission
            pending = self.waiting.popleft()
            seq = Sequence(
                request=pending.request,
                row=self.free_rows.pop(),
                max_tokens=self._reservation(pending.request) - len(pending.request.input_ids),
                block_hashes=pending.block_hashes,
                reused=cached,
                grammar=pending.grammar,
            )
            plan.admitted.append(seq)
        seq.cached = cached
        self._grow(seq, blocks, plan)
        self.running.append(seq)
        return seq

    def _make_room(self, seq: Sequence, plan: Plan) -> bool:
        """A block for the token this decode writes, if its last block is full, preempting the
        newest requests while none is free; False if that preempted ``seq`` itself."""
        if seq.cached < len(seq.blocks) * self.block_size:
            return True
        while not self.blocks.can_allocate([], 1):
            victim = self.running[-1]
            self._preempt(victim, plan)
            if victim is seq:
                return False
        self._grow(seq, self.blocks.allocate([], 1), plan)
        return True

    def _grow(self, seq: Sequence, blocks: list[int], plan: Plan) -> None:
        """Append blocks to a request; the plan tells the runner to map their slots."""
        plan.new_blocks.append((seq, len(seq.blocks)))
        seq.blocks += blocks

    def _preempt(self, seq: Sequence, plan: Plan) -> None:
        self.preemptions += 1
        self.running.remove(seq)
        self.blocks.free(seq.blocks)
        seq.blocks, seq.cached = [], 0
        self.preempted.append(seq)
        plan.preempted.append(seq)

    def _release(self, seq: Sequence) -> None:
        (self.running if seq in self.running else self.preempted).remove(seq)
        self.blocks.free(seq.blocks)
        self.free_rows.append(seq.row)

    def _drop_aborted(self) -> None:
        for seq in self.aborting:
            if seq in self._admitted():
                self._release(seq)
        self.aborting.clear()

    def _admitted(self) -> list[Sequence]:
        return [*self.running, *self.preempted]
