"""The decoder engine: continuous batching over a paged KV cache. Pure logic, no I/O, no gRPC.

Every ``step()`` drops aborted requests, gives each decoding request room for its next token,
admits preempted and then waiting requests while rows and cache allow, gives context chunks a
token budget (``prefill_chunk_tokens``, so a long prompt never stalls the running requests for
more than one chunk), decodes one token for every request past its context, all in one packed
forward (packing.py), then samples, checks stop conditions and frees finished requests in the
same step. The engine is driven from one thread; nothing here is thread-safe.

Cache policy (vLLM's): blocks are taken as they are needed, not reserved for a whole completion
up front, so requests that stop early never held cache they did not use. A request is admitted
once its prompt fits with one spare block per running request (so that admitting it does not
force a preemption at the very next step), and a decode takes a new block when its last one is
full. When none is free, the newest running request is preempted: its blocks go back (its
prompt blocks stay in the prefix cache), it keeps its row, output and sampler state, and it is
re-admitted before any waiting request, recomputing its context as a prefill. A request is
never preempted for a newer one, so the oldest always runs to its end, and ``add`` rejects at
once (TooLarge) a request that could not finish even alone in the whole cache.

Prefix caching (services.decoder.prefix_cache): an admitted request shares the cached blocks of
its longest known prefix of full prompt blocks and prefills only the rest, at least its last
token (whose logits pick the first token); its own prompt blocks join the cache once written.
"""

from __future__ import annotations

import collections
import dataclasses

import torch

from services.common.errors import InvalidInput, TooLarge
from services.decoder.kv_cache import KVCache
from services.decoder.model import Glm4ForCausalLM
from services.decoder.packing import Plan, pack, splice
from services.decoder.sampling import Sampler
from services.decoder.sequence import Pending, Segment, Sequence
from services.decoder.types import FinishReason, GenerateOutput, GenerateRequest, TokenLogprob


@dataclasses.dataclass(frozen=True)
class EngineLimits:
    max_running_requests: int
    max_model_len: int
    prefill_chunk_tokens: int


@dataclasses.dataclass(frozen=True)
class EngineStats:
    running: int
    waiting: int
    free_cache_tokens: int
    total_cache_tokens: int
    preemptions: int = 0  # since start


class Engine:
    def __init__(
        self,
        model: Glm4ForCausalLM,
        cache: KVCache,
        limits: EngineLimits,
        eos_token_ids: tuple[int, ...] = (),
    ) -> None:
        self.model = model
        self.cache = cache
        self.limits = limits
        self.eos_token_ids = frozenset(eos_token_ids)
        self.device = model.device
        self.vocab_size = int(model.config.vocab_size)
        self.hidden_size = int(model.config.hidden_size)
        rows = limits.max_running_requests
        self.sampler = Sampler(rows, self.vocab_size, self.device)
        # flat cache slot of every logical token of the request holding each row
        self.slot_table = torch.zeros(
            rows, limits.max_model_len, dtype=torch.long, device=self.device
        )
        self.free_rows = list(range(rows - 1, -1, -1))
        self.waiting: collections.deque[Pending] = collections.deque()
        self.running: list[Sequence] = []  # in admission order: the newest is preempted first
        self.preempted: collections.deque[Sequence] = collections.deque()
        self.preemptions = 0
        self.aborting: list[Sequence] = []

    # -- the caller's side ------------------------------------------------------------------

    def validate(self, request: GenerateRequest) -> None:
        """Reject what can never run. Reads only fixed settings, so any thread may call it."""
        n = len(request.input_ids)
        if n >= self.limits.max_model_len:
            raise TooLarge(
                f"the prompt has {n} tokens; max_model_len is {self.limits.max_model_len}, "
                "which leaves no room to generate"
            )
        if self._reservation(request) > self.cache.total_tokens:
            raise TooLarge(
                f"the request needs more than the whole KV cache ({self.cache.total_tokens} tokens)"
            )
        if min(request.input_ids) < 0 or max(request.input_ids) >= self.vocab_size:
            raise InvalidInput(f"input_ids must be in [0, {self.vocab_size})")
        if request.position_ids is not None and min(request.position_ids) < 0:
            raise InvalidInput("position_ids must be >= 0")
        for segment in request.segments:
            if segment.embeddings.shape[1] != self.hidden_size:
                raise InvalidInput(
                    f"segment at offset {segment.offset} has width {segment.embeddings.shape[1]}; "
                    f"the decoder's hidden size is {self.hidden_size}"
                )
            if not segment.embeddings.is_floating_point():
                raise InvalidInput("segment embeddings must be floating point")

    def prepare(self, request: GenerateRequest) -> Pending:
        """Validate and hash a request for the prefix cache. Reads only fixed settings, so any
        thread may call it: hashing a large image's embeddings takes milliseconds that the
        engine thread, decoding for everyone, should not spend."""
        self.validate(request)
        return Pending(request, self.cache.prefix_hashes(request))

    def add(self, request: GenerateRequest | Pending) -> None:
        pending = request if isinstance(request, Pending) else self.prepare(request)
        if pending.request_id in self.active_ids():
            raise InvalidInput(f"request id {pending.request_id!r} is already running")
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

    def stats(self) -> EngineStats:
        return EngineStats(
            running=len(self.running) + len(self.preempted),  # both hold a row
            waiting=len(self.waiting),
            free_cache_tokens=self.cache.free_tokens,
            total_cache_tokens=self.cache.total_tokens,
            preemptions=self.preemptions,
        )

    # -- one step ---------------------------------------------------------------------------

    @torch.inference_mode()
    def step(self) -> list[GenerateOutput]:
        self._drop_aborted()
        plan = self._schedule()
        if not plan:
            return []
        ids, positions, batch = pack(plan, self.slot_table)
        embeds = splice(plan, self.model.embed(ids))
        hidden = self.model(None, positions, batch, self.cache, inputs_embeds=embeds)
        sampled, index = plan.to_sample()
        tokens: list[int] = []
        logprobs: list[TokenLogprob | None] = []
        if sampled:
            logits = self.model.logits(hidden[self._device_longs(index)])
            tokens, logprobs = self.sampler.sample(logits, [s.row for s in sampled])
        for seq, n in plan.prefills:
            seq.cached += n  # its full prompt blocks written so far, for later prompts to reuse:
            self.cache.blocks.register(
                seq.blocks, seq.block_hashes[: seq.cached // self.cache.block_size]
            )
        for seq in plan.decodes:
            seq.cached += 1
        return [self._append(s, t, lp) for s, t, lp in zip(sampled, tokens, logprobs, strict=True)]

    def _schedule(self) -> Plan:
        budget = self.limits.prefill_chunk_tokens
        plan = Plan()
        for seq in list(self.running):  # oldest first
            if seq not in self.running:
                continue  # preempted just now, to make room for an older one
            if seq.prefilled:
                if self._make_room(seq):
                    plan.decodes.append(seq)
            elif budget > 0:
                n = min(budget, seq.context_len - seq.cached)
                plan.prefills.append((seq, n))
                budget -= n
        while budget > 0 and (self.preempted or (self.waiting and self.free_rows)):
            admitted = self._admit_next()
            if admitted is None:
                break  # FIFO: later requests wait behind the first one that does not fit
            n = min(budget, admitted.context_len - admitted.cached)
            if n > 0:  # 0: a preempted request whose whole context was still cached decodes next
                plan.prefills.append((admitted, n))
                budget -= n
        return plan

    def _append(self, seq: Sequence, token: int, logprob: TokenLogprob | None) -> GenerateOutput:
        seq.output.append(token)
        stopping = seq.request.stopping
        finish = None
        if token in stopping.stop_token_ids or (
            not stopping.ignore_eos and token in self.eos_token_ids
        ):
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

    def _admit_next(self) -> Sequence | None:
        """Re-admit the first preempted request, else admit the first waiting one, if its
        context fits beside a spare block per running request, sharing its cached prefix."""
        resumed = self.preempted[0] if self.preempted else None
        if resumed is not None:
            hashes, context = resumed.block_hashes, resumed.context_len
        else:
            hashes, context = self.waiting[0].block_hashes, len(self.waiting[0].request.input_ids)
        # a fresh prompt keeps its last token to compute: its logits pick the first token
        computes = resumed is None or not resumed.output
        matched = self.cache.blocks.match(hashes[: (context - computes) // self.cache.block_size])
        fresh = self.cache.blocks_for(context) - len(matched)
        if not self.cache.blocks.can_allocate(matched, fresh + len(self.running)):
            return None
        blocks = self.cache.blocks.allocate(matched, fresh)
        cached = len(matched) * self.cache.block_size
        if resumed is not None:
            seq = self.preempted.popleft()
        else:  # reused: what the request reports as cached_tokens, from its first admission
            seq = self._new_sequence(self.waiting.popleft(), reused=cached)
        seq.cached = cached
        self._map(seq, blocks)
        self.running.append(seq)
        return seq

    def _new_sequence(self, pending: Pending, reused: int) -> Sequence:
        request = pending.request
        row = self.free_rows.pop()
        self.sampler.assign(row, request.sampling)
        prompt_len = len(request.input_ids)
        positions = request.position_ids or range(prompt_len)
        return Sequence(
            request=request,
            row=row,
            blocks=[],
            prompt_ids=self._device_longs(request.input_ids),
            prompt_positions=self._device_longs(positions),
            segments=[
                Segment(
                    s.offset, s.offset + s.length, s.embeddings.to(self.device, self.model.dtype)
                )
                for s in request.segments
            ],
            max_tokens=self._reservation(request) - prompt_len,
            block_hashes=pending.block_hashes,
            reused=reused,
        )

    def _make_room(self, seq: Sequence) -> bool:
        """A block for the token this decode writes, if its last block is full, preempting the
        newest requests while none is free; False if that preempted ``seq`` itself."""
        if seq.cached < len(seq.blocks) * self.cache.block_size:
            return True
        while not self.cache.blocks.can_allocate([], 1):
            victim = self.running[-1]
            self._preempt(victim)
            if victim is seq:
                return False
        self._map(seq, self.cache.blocks.allocate([], 1))
        return True

    def _map(self, seq: Sequence, blocks: list[int]) -> None:
        """Append blocks to a request and point its slot-table row at their slots."""
        first = len(seq.blocks) * self.cache.block_size
        seq.blocks += blocks
        end = min(len(seq.blocks) * self.cache.block_size, self.limits.max_model_len)
        self.slot_table[seq.row, first:end] = self.cache.slots(blocks, end - first)

    def _preempt(self, seq: Sequence) -> None:
        self.preemptions += 1
        self.running.remove(seq)
        self.cache.blocks.free(seq.blocks)
        seq.blocks, seq.cached = [], 0
        self.preempted.append(seq)

    def _release(self, seq: Sequence) -> None:
        (self.running if seq in self.running else self.preempted).remove(seq)
        self.cache.blocks.free(seq.blocks)
        self.free_rows.append(seq.row)

    def _drop_aborted(self) -> None:
        for seq in self.aborting:
            if seq in self._admitted():
                self._release(seq)
        self.aborting.clear()

    def _admitted(self) -> list[Sequence]:
        return [*self.running, *self.preempted]

    def _device_longs(self, values: object) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=self.device)
