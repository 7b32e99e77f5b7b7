"""The decoder engine: continuous batching over a paged KV cache. Pure logic, no I/O, no gRPC.

Every ``step()`` drops aborted requests, admits waiting ones while rows and cache allow,
gives prompt chunks a token budget (``prefill_chunk_tokens``, so a long prompt never stalls the
running requests for more than one chunk), decodes one token for every request past its prompt,
all in one packed forward, then samples, checks stop conditions and frees finished requests in
the same step. The engine is driven from one thread; nothing here is thread-safe.

Cache policy: a request reserves blocks for its prompt plus its whole completion when it is
admitted, so a running request never runs out of cache and nothing is ever preempted; what does
not fit now waits in FIFO order, and what could never fit is rejected with TooLarge at ``add``.

Prefix caching (services.decoder.prefix_cache): an admitted request shares the cached blocks of
its longest known prefix of full prompt blocks and prefills only the rest, at least its last
token (whose logits pick the first token); its own prompt blocks join the cache once written.
"""

from __future__ import annotations

import collections
import dataclasses

import torch

from services.common.errors import InvalidInput, TooLarge
from services.decoder.kv_cache import ForwardBatch, KVCache, PrefillSpan
from services.decoder.model import Glm4ForCausalLM
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


@dataclasses.dataclass
class _Plan:
    """What one step computes: prompt chunks (sequence, tokens), then decodes."""

    prefills: list[tuple[Sequence, int]]
    decodes: list[Sequence]


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
        self.running: list[Sequence] = []
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
        if pending.request_id in self._active_ids():
            raise InvalidInput(f"request id {pending.request_id!r} is already running")
        self.waiting.append(pending)

    def abort(self, request_id: str) -> None:
        """Drop a request: at once if it is waiting; if it runs, its row and cache are freed at
        the start of the next step (so the id may be reused right away)."""
        self.waiting = collections.deque(r for r in self.waiting if r.request_id != request_id)
        self.aborting += [s for s in self.running if s.request_id == request_id]

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def stats(self) -> EngineStats:
        return EngineStats(
            running=len(self.running),
            waiting=len(self.waiting),
            free_cache_tokens=self.cache.free_tokens,
            total_cache_tokens=self.cache.total_tokens,
        )

    # -- one step ---------------------------------------------------------------------------

    @torch.inference_mode()
    def step(self) -> list[GenerateOutput]:
        self._drop_aborted()
        plan = self._schedule()
        if not plan.prefills and not plan.decodes:
            return []
        ids, positions, batch = self._pack(plan)
        embeds = self._embed(plan, ids)
        hidden = self.model(None, positions, batch, self.cache, inputs_embeds=embeds)
        sampled, index = self._to_sample(plan)
        tokens: list[int] = []
        logprobs: list[TokenLogprob | None] = []
        if sampled:
            logits = self.model.logits(hidden[index])
            tokens, logprobs = self.sampler.sample(logits, [s.row for s in sampled])
        for seq, n in plan.prefills:
            seq.cached += n  # its full prompt blocks written so far, for later prompts to reuse:
            self.cache.blocks.register(
                seq.blocks, seq.block_hashes[: seq.cached // self.cache.block_size]
            )
        for seq in plan.decodes:
            seq.cached += 1
        return [self._append(s, t, lp) for s, t, lp in zip(sampled, tokens, logprobs, strict=True)]

    def _schedule(self) -> _Plan:
        budget = self.limits.prefill_chunk_tokens
        plan = _Plan(prefills=[], decodes=[])
        for seq in self.running:
            if seq.prefilled:
                plan.decodes.append(seq)
            elif budget > 0:
                n = min(budget, seq.prompt_len - seq.cached)
                plan.prefills.append((seq, n))
                budget -= n
        while budget > 0 and self.waiting and self.free_rows:
            admitted = self._admit_next()
            if admitted is None:
                break  # FIFO: later requests wait behind the first one that does not fit
            n = min(budget, admitted.prompt_len - admitted.cached)
            plan.prefills.append((admitted, n))
            budget -= n
        return plan

    def _pack(self, plan: _Plan) -> tuple[torch.Tensor, torch.Tensor, ForwardBatch]:
        """Token ids, positions and attention map of the packed step: chunks, then decodes."""
        ids, positions, writes, spans = [], [], [], []
        start = 0
        for seq, n in plan.prefills:
            done = seq.cached
            ids.append(seq.prompt_ids[done : done + n])
            positions.append(seq.prompt_positions[done : done + n])
            kv_slots = self.slot_table[seq.row, : done + n]
            writes.append(kv_slots[done:])
            spans.append(PrefillSpan(start=start, end=start + n, context=done, kv_slots=kv_slots))
            start += n
        decode_kv_slots = decode_mask = None
        if plan.decodes:
            rows = self._device_longs([s.row for s in plan.decodes])
            lengths = self._device_longs([s.cached + 1 for s in plan.decodes])
            longest = max(s.cached + 1 for s in plan.decodes)
            decode_kv_slots = self.slot_table[rows, :longest]
            attend = torch.arange(longest, device=self.device) < lengths[:, None]
            decode_mask = attend[:, None, None, :]
            ids.append(self._device_longs([s.output[-1] for s in plan.decodes]))
            positions.append(self._device_longs([s.next_position for s in plan.decodes]))
            writes.append(decode_kv_slots.gather(1, (lengths - 1)[:, None])[:, 0])
        batch = ForwardBatch(torch.cat(writes), tuple(spans), start, decode_kv_slots, decode_mask)
        return torch.cat(ids), torch.cat(positions), batch

    def _embed(self, plan: _Plan, ids: torch.Tensor) -> torch.Tensor:
        embeds = self.model.embed(ids)
        start = 0
        for seq, n in plan.prefills:
            seq.splice(embeds, start, n)
            start += n
        return embeds

    def _to_sample(self, plan: _Plan) -> tuple[list[Sequence], torch.Tensor]:
        """Requests that get a token this step (those whose prompt completes, and the decodes)
        and the packed index of the hidden state each one samples from."""
        sampled, index, end = [], [], 0
        for seq, n in plan.prefills:
            end += n
            if seq.cached + n == seq.prompt_len:
                sampled.append(seq)
                index.append(end - 1)
        sampled += plan.decodes
        index += range(end, end + len(plan.decodes))
        return sampled, self._device_longs(index)

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
        """Admit the first waiting request if its blocks fit, sharing its cached prefix."""
        pending = self.waiting[0]
        request = pending.request
        reserved = self._reservation(request)
        # never the whole prompt: the last prompt token is computed for its logits
        reusable = (len(request.input_ids) - 1) // self.cache.block_size
        matched = self.cache.blocks.match(pending.block_hashes[:reusable])
        fresh = self.cache.blocks_for(reserved) - len(matched)
        if not self.cache.blocks.can_allocate(matched, fresh):
            return None
        self.waiting.popleft()
        blocks = self.cache.blocks.allocate(matched, fresh)
        reused = len(matched) * self.cache.block_size
        row = self.free_rows.pop()
        self.slot_table[row, :reserved] = self.cache.slots(blocks, reserved)
        self.sampler.assign(row, request.sampling)
        prompt_len = len(request.input_ids)
        positions = request.position_ids or range(prompt_len)
        seq = Sequence(
            request=request,
            row=row,
            blocks=blocks,
            prompt_ids=self._device_longs(request.input_ids),
            prompt_positions=self._device_longs(positions),
            segments=[
                Segment(
                    s.offset, s.offset + s.length, s.embeddings.to(self.device, self.model.dtype)
                )
                for s in request.segments
            ],
            max_tokens=reserved - prompt_len,
            block_hashes=pending.block_hashes,
            cached=reused,
            reused=reused,
        )
        self.running.append(seq)
        return seq

    def _release(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.cache.blocks.free(seq.blocks)
        self.free_rows.append(seq.row)

    def _drop_aborted(self) -> None:
        for seq in self.aborting:
            if seq in self.running:
                self._release(seq)
        self.aborting.clear()

    def _active_ids(self) -> set[str]:
        running = {s.request_id for s in self.running if s not in self.aborting}
        return running | {r.request_id for r in self.waiting}

    def _device_longs(self, values: object) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=self.device)
