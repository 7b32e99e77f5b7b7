"""One engine step's plan, and the packed model inputs it turns into.

The scheduler (engine.py) decides which requests run a prompt chunk and which decode; this
module lays their tokens out as one packed sequence (chunks first, then one token per decode),
with the cache slots each token writes and reads (``kv_cache.ForwardBatch``), splices the
multimodal embeddings in, and says which packed position each sampled request reads its logits
from.
"""

from __future__ import annotations

import dataclasses

import torch

from services.decoder.kv_cache import ForwardBatch, PrefillSpan
from services.decoder.sequence import Sequence


@dataclasses.dataclass
class Plan:
    """What one step computes: context chunks (sequence, tokens), then decodes."""

    prefills: list[tuple[Sequence, int]] = dataclasses.field(default_factory=list)
    decodes: list[Sequence] = dataclasses.field(default_factory=list)

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


def pack(plan: Plan, slot_table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, ForwardBatch]:
    """Token ids, positions and attention map of the packed step."""
    device = slot_table.device
    ids, positions, writes, spans = [], [], [], []
    start = 0
    for seq, n in plan.prefills:
        done = seq.cached
        chunk_ids, chunk_positions = seq.chunk(n, device)
        ids.append(chunk_ids)
        positions.append(chunk_positions)
        kv_slots = slot_table[seq.row, : done + n]
        writes.append(kv_slots[done:])
        spans.append(PrefillSpan(start=start, end=start + n, context=done, kv_slots=kv_slots))
        start += n
    decode_kv_slots = decode_mask = None
    if plan.decodes:
        rows = _longs([s.row for s in plan.decodes], device)
        lengths = _longs([s.cached + 1 for s in plan.decodes], device)
        longest = max(s.cached + 1 for s in plan.decodes)
        decode_kv_slots = slot_table[rows, :longest]
        attend = torch.arange(longest, device=device) < lengths[:, None]
        decode_mask = attend[:, None, None, :]
        ids.append(_longs([s.output[-1] for s in plan.decodes], device))
        positions.append(_longs([s.next_position for s in plan.decodes], device))
        writes.append(decode_kv_slots.gather(1, (lengths - 1)[:, None])[:, 0])
    batch = ForwardBatch(torch.cat(writes), tuple(spans), start, decode_kv_slots, decode_mask)
    return torch.cat(ids), torch.cat(positions), batch


def splice(plan: Plan, embeds: torch.Tensor) -> torch.Tensor:
    """The packed input embeddings with each chunk's multimodal segments in place."""
    start = 0
    for seq, n in plan.prefills:
        seq.splice(embeds, start, n)
        start += n
    return embeds


def _longs(values: list[int], device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long, device=device)
