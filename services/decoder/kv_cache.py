"""The preallocated, paged KV cache and the per-step map of where each token reads and writes.

The cache is one tensor per layer, ``[num_blocks * block_size, 2, kv_heads, head_dim]``: a
token's K and V side by side, so one step writes a layer's new K and V with one copy and reads
them with one gather (they leave the q/k/v projection side by side too). Allocated once at
start-up. A request owns a list of blocks; its logical token ``i`` lives in
slot ``blocks[i // block_size] * block_size + i % block_size``. Blocks are handed out whole, so
requests of any length share the cache without fragmenting it; ``BlockPool``
(services.decoder.prefix_cache) hands them out and, with prefix caching, lets requests share
the blocks of a common prompt prefix.

A forward step packs the new tokens of every scheduled request into one sequence (the Linear
layers see ``[tokens, hidden]``); ``ForwardBatch`` tells attention which slots those tokens are
written to and which slots each request attends over.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import nn

from services.decoder.block_pool import BlockHash, BlockPool
from services.decoder.prefix_cache import block_hashes
from services.decoder.types import GenerateRequest


class KVCache:
    def __init__(
        self,
        *,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        num_blocks: int,
        block_size: int,
        dtype: torch.dtype,
        device: torch.device,
        prefix_caching: bool = False,
    ) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError("the KV cache needs at least one block of at least one token")
        # one slot past the blocks: no request owns it; padded rows of a fixed-shape step (CUDA
        # graphs, cuda_graphs.py) read and write it
        self.scratch_slot = num_blocks * block_size
        shape = (num_layers, self.scratch_slot + 1, 2, num_kv_heads, head_dim)
        self.kv = torch.zeros(shape, dtype=dtype, device=device)
        self.layers = self.kv.unbind(0)  # views made once: no select per layer and step
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.blocks = BlockPool(num_blocks, prefix_caching)

    @property
    def total_tokens(self) -> int:
        return self.num_blocks * self.block_size

    @property
    def free_tokens(self) -> int:
        """Tokens a new request may take, blocks kept only for the prefix cache included."""
        return self.blocks.free_blocks * self.block_size

    def blocks_for(self, n_tokens: int) -> int:
        return -(-n_tokens // self.block_size)

    def prefix_hashes(self, request: GenerateRequest) -> tuple[BlockHash, ...]:
        """The hashes of the request's full prompt blocks; none when prefix caching is off."""
        return block_hashes(request, self.block_size) if self.blocks.prefix_caching else ()

    def slots(self, blocks: list[int], n_tokens: int) -> torch.Tensor:
        """The flat cache slot of each of a request's first n_tokens logical tokens."""
        ids = torch.tensor(blocks, dtype=torch.long, device=self.kv.device)
        offsets = torch.arange(self.block_size, device=self.kv.device)
        return (ids[:, None] * self.block_size + offsets).flatten()[:n_tokens]

    def write(self, layer: int, slots: torch.Tensor, kv: torch.Tensor) -> None:
        """Store the new tokens' K and V ([tokens, 2, kv_heads, head_dim]) at their slots."""
        self.layers[layer].index_copy_(0, slots, kv)

    def read(self, layer: int, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V at slots of any shape: [*slots.shape, kv_heads, head_dim]. index_select, not
        advanced indexing: on the CPU the latter is far slower for this gather."""
        kv = self.layers[layer].index_select(0, slots.flatten()).unflatten(0, slots.shape)
        k, v = kv.unbind(-3)
        return k, v


@dataclasses.dataclass(frozen=True)
class PrefillSpan:
    """One request's prompt chunk: packed tokens [start, end), attending over kv_slots."""

    start: int
    end: int
    context: int  # tokens of this request already in the cache before the chunk
    kv_slots: torch.Tensor  # [context + chunk] slots, the chunk's own included


# Spans batched into one attention call are padded to the group's longest chunk and KV length,
# and padding is wasted work; one call per span, though, costs a gather, a mask and a kernel
# launch per span and layer (16 prompt tails over a shared cached prefix: ~9 ms a layer on the
# CPU against ~4 ms batched). So spans, shortest chunk first, join a group while its padded
# score matrix stays within PADDING_BOUND x the spans' own: equal tails become one call, a long
# chunk beside short tails stays alone (padding every tail to its rows would cost far more).
# The group's additive bias is materialised, once per step, at query heads per KV head x its
# cells (spans x rows x KV length): MAX_GROUP_CELLS keeps it to tens of MB (2M cells, 16 heads
# per KV head, bf16: 64 MB), where long chunks over long contexts, batched, would take GBs;
# such spans gain little from batching anyway, their own compute dwarfs a call's overhead.
PADDING_BOUND = 2.0
MAX_GROUP_CELLS = 1 << 21


def group_spans(spans: tuple[PrefillSpan, ...]) -> list[tuple[PrefillSpan, ...]]:
    """The spans in batches whose padded attention costs at most PADDING_BOUND x their own,
    of at most MAX_GROUP_CELLS padded cells each (a span alone may have more)."""
    groups: list[tuple[PrefillSpan, ...]] = []
    current: tuple[PrefillSpan, ...] = ()
    for span in sorted(spans, key=lambda s: (s.end - s.start, s.kv_slots.shape[0])):
        joined = (*current, span)
        rows = max(s.end - s.start for s in joined)
        columns = max(s.kv_slots.shape[0] for s in joined)
        own = sum((s.end - s.start) * s.kv_slots.shape[0] for s in joined)
        cells = len(joined) * rows * columns
        if current and (cells > PADDING_BOUND * own or cells > MAX_GROUP_CELLS):
            groups.append(current)
            joined = (span,)
        current = joined
    return [*groups, current] if current else groups


@dataclasses.dataclass(frozen=True)
class PrefillGroup:
    """Prefill spans attended in one call, each padded to ``rows`` query rows and the longest
    KV length. Attention's layout is the decode one: the query heads sharing a KV head are
    that head's rows, row ``i * query_group + g`` holding chunk row i of query head g."""

    rows: int  # query rows per span: the group's longest chunk
    query_rows: torch.Tensor  # [spans * rows]: packed row of each; a padded one repeats its last
    kept: torch.Tensor  # [real rows]: the real ones among query_rows
    packed_rows: torch.Tensor  # [real rows]: where their outputs go in the packed sequence
    kv_slots: torch.Tensor  # [spans, longest]: each span's slots, then the scratch slot
    # [spans, 1, rows * query_group, longest]: 0 = attend, -inf = not. Row i of a span attends
    # columns j <= context + i (never the padding past its own length); a padded row attends
    # as its span's last row, so no row is all -inf (NaN) and its discarded output is finite
    bias: torch.Tensor

    @classmethod
    def of(
        cls, spans: tuple[PrefillSpan, ...], dtype: torch.dtype, query_group: int, scratch: int
    ) -> PrefillGroup:
        device = spans[0].kv_slots.device
        rows = max(s.end - s.start for s in spans)
        row = [[min(i, s.end - s.start - 1) for i in range(rows)] for s in spans]
        query_rows = [s.start + i for s, r in zip(spans, row, strict=True) for i in r]
        kept = [k * rows + i for k, s in enumerate(spans) for i in range(s.end - s.start)]
        last = [[s.context + i for i in r] for s, r in zip(spans, row, strict=True)]
        kv_slots = [s.kv_slots for s in spans]
        padded = nn.utils.rnn.pad_sequence(kv_slots, batch_first=True, padding_value=scratch)
        columns = torch.arange(padded.shape[1], device=device)
        attend = columns <= longs(last, device)[..., None]  # [spans, rows, longest]
        bias = torch.zeros(attend.shape, dtype=dtype, device=device)
        bias.masked_fill_(~attend, float("-inf"))
        expanded = bias[:, None, :, None].expand(-1, -1, -1, query_group, -1)
        return cls(
            rows=rows,
            query_rows=longs(query_rows, device),
            kept=longs(kept, device),
            packed_rows=longs([query_rows[k] for k in kept], device),
            kv_slots=padded,
            bias=expanded.reshape(len(spans), 1, rows * query_group, -1),
        )


@dataclasses.dataclass(frozen=True)
class ForwardBatch:
    """Where one step's packed tokens go: prefill chunks first, then one token per decode."""

    write_slots: torch.Tensor  # [tokens]: where each new token's K/V is stored
    prefills: tuple[PrefillSpan, ...]
    decode_start: int  # packed index of the first decode token
    decode_kv_slots: torch.Tensor | None = None  # [decodes, longest]: slots each decode reads
    # [decodes, 1, 1, longest]: True = attend (or, from for_attention, 0 = attend)
    decode_mask: torch.Tensor | None = None
    decode_uniform: bool = False  # every decode attends over all `longest`: the mask is all True
    # from for_attention: the prefills as attention runs them, a span alone or a batched group
    prefill_groups: tuple[PrefillSpan | PrefillGroup, ...] = ()

    def for_attention(self, dtype: torch.dtype, query_group: int, scratch: int) -> ForwardBatch:
        """This batch as every layer's attention reads it, made once per step: the prefill
        spans grouped (``group_spans``; ``PrefillGroup`` in the model's dtype, query heads per
        KV head and padded with the cache's scratch slot), and the boolean decode mask as
        attention's additive bias (0 where True, -inf where False) in the model's dtype:
        scaled_dot_product_attention converts a boolean mask into exactly that, in every layer."""
        groups = tuple(
            group[0] if len(group) == 1 else PrefillGroup.of(group, dtype, query_group, scratch)
            for group in group_spans(self.prefills)
        )
        mask = self.decode_mask
        if mask is not None and mask.dtype == torch.bool and not self.decode_uniform:
            bias = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
            mask = bias.masked_fill_(~mask, float("-inf"))
        return dataclasses.replace(self, decode_mask=mask, prefill_groups=groups)


def longs(values: Sequence[int] | Sequence[Sequence[int]], device: torch.device) -> torch.Tensor:
    """Token ids, positions, rows or slots as a long tensor on ``device``."""
    return torch.tensor(values, dtype=torch.long, device=device)
