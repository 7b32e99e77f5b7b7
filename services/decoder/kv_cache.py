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

import torch

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


@dataclasses.dataclass(frozen=True)
class ForwardBatch:
    """Where one step's packed tokens go: prefill chunks first, then one token per decode."""

    write_slots: torch.Tensor  # [tokens]: where each new token's K/V is stored
    prefills: tuple[PrefillSpan, ...]
    decode_start: int  # packed index of the first decode token
    decode_kv_slots: torch.Tensor | None = None  # [decodes, longest]: slots each decode reads
    # [decodes, 1, 1, longest]: True = attend (or, from with_mask_bias, 0 = attend)
    decode_mask: torch.Tensor | None = None
    decode_uniform: bool = False  # every decode attends over all `longest`: the mask is all True

    def with_mask_bias(self, dtype: torch.dtype) -> ForwardBatch:
        """This batch with its boolean decode mask as attention's additive bias (0 where True,
        -inf where False) in the model's dtype, made once per step: scaled_dot_product_attention
        converts a boolean mask into exactly that bias, in every layer."""
        mask = self.decode_mask
        if mask is None or mask.dtype != torch.bool or self.decode_uniform:
            return self
        bias = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
        return dataclasses.replace(self, decode_mask=bias.masked_fill_(~mask, float("-inf")))
