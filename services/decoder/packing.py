"""The packed model inputs of one engine step's plan.

The scheduler (scheduler.py) decides which requests run a context chunk and which decode; this
module lays their tokens out as one packed sequence (chunks first, then one token per decode),
with the cache slots each token writes and reads (``kv_cache.ForwardBatch``), and splices the
multimodal embeddings in. A request's prompt lives on the device as a ``DevicePrompt``, set up
by the model runner when the request is admitted.
"""

from __future__ import annotations

import dataclasses

import torch

from services.decoder.kv_cache import ForwardBatch, PrefillSpan, longs
from services.decoder.scheduler import Plan
from services.decoder.sequence import Sequence


@dataclasses.dataclass(frozen=True)
class Segment:
    """Multimodal embeddings already on the model's device and in its dtype."""

    start: int
    end: int
    embeddings: torch.Tensor


@dataclasses.dataclass(frozen=True)
class DevicePrompt:
    """A running request's prompt on the model's device (``Sequence.inputs``): what its
    context chunks are cut from."""

    ids: torch.Tensor  # [prompt]
    positions: torch.Tensor  # [axes, prompt]: 3 rows (t, h, w) for mRoPE, else 1
    segments: tuple[Segment, ...]


def _prompt(seq: Sequence) -> DevicePrompt:
    assert isinstance(seq.inputs, DevicePrompt), "the model runner sets up every admitted row"
    return seq.inputs


def chunk(seq: Sequence, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids and positions of context tokens [cached, cached + n): prompt tokens, then
    (recomputing after a preemption) generated ones."""
    prompt = _prompt(seq)
    lo, hi = seq.cached, seq.cached + n
    ids, positions = [prompt.ids[lo:hi]], [prompt.positions[:, lo:hi]]
    if hi > seq.prompt_len:
        a, b = max(lo, seq.prompt_len) - seq.prompt_len, hi - seq.prompt_len
        ids.append(longs(seq.output[a:b], device))
        after = range(seq.position_after_prompt(a), seq.position_after_prompt(b))
        positions.append(longs(list(after), device).expand(prompt.positions.shape[0], -1))
    return _join(ids), _join(positions, dim=1)


def pack(
    plan: Plan, slot_table: torch.Tensor, axes: int = 1
) -> tuple[torch.Tensor, torch.Tensor, ForwardBatch]:
    """Token ids, positions and attention map of the packed step. Positions are [tokens] for
    a 1-D model (the fast path), [axes, tokens] for mRoPE (generated tokens: the same value on
    every axis)."""
    device = slot_table.device
    ids, positions, writes, spans = [], [], [], []
    start = 0
    for seq, n in plan.prefills:
        done = seq.cached
        chunk_ids, chunk_positions = chunk(seq, n, device)
        ids.append(chunk_ids)
        positions.append(chunk_positions)
        kv_slots = slot_table[seq.row, : done + n]
        writes.append(kv_slots[done:])
        spans.append(PrefillSpan(start=start, end=start + n, context=done, kv_slots=kv_slots))
        start += n
    decode_kv_slots = decode_mask = None
    uniform = False
    if plan.decodes:
        rows = longs([s.row for s in plan.decodes], device)
        lengths = longs([s.cached + 1 for s in plan.decodes], device)
        longest = max(s.cached + 1 for s in plan.decodes)
        uniform = all(s.cached + 1 == longest for s in plan.decodes)
        decode_kv_slots = slot_table[rows, :longest]
        attend = torch.arange(longest, device=device) < lengths[:, None]
        decode_mask = attend[:, None, None, :]
        ids.append(longs([s.output[-1] for s in plan.decodes], device))
        next_positions = longs([s.next_position for s in plan.decodes], device)
        positions.append(next_positions.expand(axes, -1))
        writes.append(decode_kv_slots.gather(1, (lengths - 1)[:, None])[:, 0])
    batch = ForwardBatch(_join(writes), tuple(spans), start, decode_kv_slots, decode_mask, uniform)
    packed = _join(positions, dim=1)
    return _join(ids), packed[0] if axes == 1 else packed, batch


def splice(plan: Plan, embeds: torch.Tensor) -> torch.Tensor:
    """The packed input embeddings with each chunk's multimodal segments in place."""
    start = 0
    for seq, n in plan.prefills:  # prompt tokens [cached, cached + n) sit at [start, start + n)
        lo, hi = seq.cached, seq.cached + n
        for segment in _prompt(seq).segments:
            a, b = max(segment.start, lo), min(segment.end, hi)
            if a < b:
                target = slice(start + a - lo, start + b - lo)
                embeds[target] = segment.embeddings[a - segment.start : b - segment.start]
        start += n
    return embeds


def _join(parts: list[torch.Tensor], dim: int = 0) -> torch.Tensor:
    """torch.cat, without its copy when there is one part (every decode-only step)."""
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=dim)
