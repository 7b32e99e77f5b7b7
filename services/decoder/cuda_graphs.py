"""CUDA graphs for decode steps: one captured forward and lm_head per (rows, KV length) bucket.

On a GPU a small model's decode step is mostly kernel launches (hundreds per step, each a few
microseconds of CPU), so replaying a captured graph of the whole step removes nearly all of its
host cost. A graph has fixed shapes, so each decode-only step is padded to the smallest bucket
holding it: its rows to the next of ``ROW_BUCKETS``, its KV length to the next power of two from
``MIN_KV_BUCKET`` (capped at max_model_len). Padded rows read and write the cache's scratch slot
(``KVCache.scratch_slot``, which no request owns) and attend to it alone, so no row is fully
masked; the padded columns of real rows point at it too, masked out. A bucket's graph is
captured the first time a step needs it; prefill steps, and steps past the largest bucket, run
eagerly. ``pad_decode`` is plain torch, so the padding is tested on the CPU.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from services.decoder.kv_cache import ForwardBatch, KVCache
from services.decoder.model import Glm4ForCausalLM

if TYPE_CHECKING:
    from torch.cuda.graphs import _POOL_HANDLE  # what graph_pool_handle() returns

ROW_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64)
MIN_KV_BUCKET = 256


def bucket_rows(rows: int) -> int | None:
    """The smallest row bucket holding ``rows``; None past the largest (run eagerly)."""
    return next((bucket for bucket in ROW_BUCKETS if bucket >= rows), None)


def bucket_length(length: int, max_model_len: int) -> int:
    """The next power of two from MIN_KV_BUCKET, capped at max_model_len."""
    bucket = MIN_KV_BUCKET
    while bucket < length:
        bucket *= 2
    return min(bucket, max(max_model_len, length))


def pad_decode(
    ids: torch.Tensor, positions: torch.Tensor, batch: ForwardBatch, rows: int, length: int,
    scratch: int,
) -> tuple[torch.Tensor, torch.Tensor, ForwardBatch]:  # fmt: skip
    """A decode-only step's inputs padded to ``rows`` rows and ``length`` KV columns; the real
    rows' results are unchanged (tests/decoder/test_cuda_graphs.py)."""
    assert batch.decode_kv_slots is not None and batch.decode_mask is not None
    assert not batch.prefills, "only decode-only steps are padded"
    extra_rows = rows - ids.shape[0]
    extra_columns = length - batch.decode_kv_slots.shape[1]
    kv_slots = F.pad(batch.decode_kv_slots, (0, extra_columns, 0, extra_rows), value=scratch)
    mask = F.pad(batch.decode_mask, (0, extra_columns, 0, 0, 0, 0, 0, extra_rows), value=False)
    mask[rows - extra_rows :, ..., 0] = True  # a padded row attends to its own scratch slot
    padded = ForwardBatch(
        write_slots=F.pad(batch.write_slots, (0, extra_rows), value=scratch),
        prefills=(),
        decode_start=0,
        decode_kv_slots=kv_slots,
        decode_mask=mask,
    )
    return F.pad(ids, (0, extra_rows)), F.pad(positions, (0, extra_rows)), padded


class _Graph:
    """One bucket's captured step: static inputs, copied into before each replay."""

    def __init__(
        self, model: Glm4ForCausalLM, cache: KVCache, ids: torch.Tensor, positions: torch.Tensor,
        batch: ForwardBatch, pool: _POOL_HANDLE,
    ) -> None:  # fmt: skip
        self.ids, self.positions = ids.clone(), positions.clone()
        self.batch = ForwardBatch(
            batch.write_slots.clone(), (), 0,
            _present(batch.decode_kv_slots).clone(), _present(batch.decode_mask).clone(),
        )  # fmt: skip

        def step() -> torch.Tensor:
            hidden = model(None, self.positions, self.batch, cache, model.embed(self.ids))
            return model.logits(hidden)

        # Warm up on a side stream (lazy inits, library workspaces), as torch's docs ask. It
        # writes this step's own K/V to its own slots, as the replay then does again.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            step()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool):
            self.logits = step()

    def replay(self, ids: torch.Tensor, positions: torch.Tensor, batch: ForwardBatch) -> None:
        self.ids.copy_(ids)
        self.positions.copy_(positions)
        self.batch.write_slots.copy_(batch.write_slots)
        _present(self.batch.decode_kv_slots).copy_(_present(batch.decode_kv_slots))
        _present(self.batch.decode_mask).copy_(_present(batch.decode_mask))
        self.graph.replay()


class DecodeGraphs:
    """The decode steps of one model and cache, run as CUDA graphs per bucket."""

    def __init__(self, model: Glm4ForCausalLM, cache: KVCache, max_model_len: int) -> None:
        if cache.kv.device.type != "cuda":
            raise ValueError("CUDA graphs need the model and its KV cache on a CUDA device")
        self.model, self.cache, self.max_model_len = model, cache, max_model_len
        self.pool = torch.cuda.graph_pool_handle()  # one memory pool shared by every bucket
        self.graphs: dict[tuple[int, int], _Graph] = {}

    def logits(
        self, ids: torch.Tensor, positions: torch.Tensor, batch: ForwardBatch
    ) -> torch.Tensor | None:
        """fp32 logits of every decode row of a decode-only step, or None (run it eagerly)."""
        if batch.prefills or batch.decode_kv_slots is None:
            return None
        real = ids.shape[0]
        rows = bucket_rows(real)
        if rows is None:
            return None
        length = bucket_length(batch.decode_kv_slots.shape[1], self.max_model_len)
        padded = pad_decode(ids, positions, batch, rows, length, self.cache.scratch_slot)
        graph = self.graphs.get((rows, length))
        if graph is None:
            graph = _Graph(self.model, self.cache, *padded, pool=self.pool)
            self.graphs[rows, length] = graph
        graph.replay(*padded)
        return graph.logits[:real]


def _present(tensor: torch.Tensor | None) -> torch.Tensor:
    assert tensor is not None, "a decode step has KV slots and a mask"
    return tensor
