"""GLM-4's attention over the packed step: grouped-query attention with biased q/k/v (one fused
``qkv_proj``), rotary embedding on q and k, the new K/V written to the paged cache, then each
token attending over its own request's cached tokens (``kv_cache.ForwardBatch``).

Three ways to attend, chosen once per step (``ForwardBatch.for_attention``): a prefill span
alone (one call, causal), a group of prefill spans batched into one padded call, and every
decode row batched. The batched ones use the grouped layout: the query heads sharing a KV head
become that head's query rows, so no K/V is repeated per query head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from services.decoder.kv_cache import ForwardBatch, KVCache, PrefillGroup, PrefillSpan
from services.decoder.rope import Rope, apply_rotary
from services.decoder.text_config import TextModelConfig


class Glm4Attention(nn.Module):
    def __init__(self, config: TextModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        # q, k and v fused into one Linear [q | k | v] (the checkpoint's three are joined at
        # load, model.join_qkv): one GEMM and one int4 call per layer instead of three
        self.qkv_proj = nn.Linear(
            config.hidden_size,
            (self.num_heads + 2 * self.num_kv_heads) * self.head_dim,
            bias=config.attention_bias,
        )
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=False)

    def forward(
        self, x: torch.Tensor, rope: Rope, batch: ForwardBatch, cache: KVCache
    ) -> torch.Tensor:
        """``batch`` as ``ForwardBatch.for_attention`` made it for this step."""
        tokens, heads, kv_heads = x.shape[0], self.num_heads, self.num_kv_heads
        qkv = self.qkv_proj(x).view(tokens, heads + 2 * kv_heads, self.head_dim)
        qk = qkv[:, : heads + kv_heads]
        apply_rotary(qk, *rope, out=qk)  # q and k in one go, in place: [q | k | v] stays whole
        q = qkv[:, :heads]
        cache.write(self.layer_idx, batch.write_slots, qkv[:, heads:].unflatten(1, (2, kv_heads)))
        if not batch.prefills:  # decodes only: no output to assemble
            return self.o_proj(self._decode(q, batch, cache).reshape(tokens, -1))

        assert batch.prefill_groups, "ForwardBatch.for_attention groups the prefill spans"
        out = q.new_empty(tokens, heads, self.head_dim)
        for group in batch.prefill_groups:
            if isinstance(group, PrefillGroup):
                out.index_copy_(0, group.packed_rows, self._prefill_group(q, group, cache))
            else:
                chunk = qkv[group.start : group.end]
                k, v = chunk[:, heads : heads + kv_heads], chunk[:, heads + kv_heads :]
                out[group.start : group.end] = self._prefill(chunk[:, :heads], k, v, group, cache)
        if batch.decode_kv_slots is not None:
            out[batch.decode_start :] = self._decode(q[batch.decode_start :], batch, cache)
        return self.o_proj(out.view(tokens, -1))

    def _prefill(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, span: PrefillSpan, cache: KVCache
    ) -> torch.Tensor:
        """One request's chunk: causal over its cached context plus the chunk itself."""
        n = q.shape[0]
        if span.context == 0:  # nothing cached yet: attend over the fresh K/V, plain causal
            mask, causal = None, True
        else:
            k, v = cache.read(self.layer_idx, span.kv_slots)
            full = torch.ones(n, k.shape[0], dtype=torch.bool, device=q.device)
            mask, causal = full.tril(diagonal=span.context), False
        out = F.scaled_dot_product_attention(
            q.transpose(0, 1)[None],
            k.transpose(0, 1)[None],
            v.transpose(0, 1)[None],
            attn_mask=mask,
            is_causal=causal,
            enable_gqa=True,
        )
        return out[0].transpose(0, 1)

    def _prefill_group(self, q: torch.Tensor, group: PrefillGroup, cache: KVCache) -> torch.Tensor:
        """Several requests' chunks in one call, each padded to the group's rows and KV length
        ([spans, kv_heads, rows * heads per KV head, d]); the real rows' outputs, in
        ``group.kept`` order."""
        spans, per_kv = group.kv_slots.shape[0], self.num_heads // self.num_kv_heads
        rows = q.index_select(0, group.query_rows)  # [spans * rows, heads, d]
        rows = rows.view(spans, group.rows, self.num_kv_heads, per_kv, self.head_dim)
        grouped = rows.transpose(1, 2).reshape(spans, self.num_kv_heads, -1, self.head_dim)
        k, v = cache.read(self.layer_idx, group.kv_slots)  # [spans, longest, kv, d]
        out = F.scaled_dot_product_attention(
            grouped, k.transpose(1, 2), v.transpose(1, 2), attn_mask=group.bias
        )
        out = out.view(spans, self.num_kv_heads, group.rows, per_kv, self.head_dim).transpose(1, 2)
        return out.reshape(-1, self.num_heads, self.head_dim).index_select(0, group.kept)

    def _decode(self, q: torch.Tensor, batch: ForwardBatch, cache: KVCache) -> torch.Tensor:
        """One new token per request, batched: [B, kv_heads, heads per KV head, d]."""
        assert batch.decode_kv_slots is not None
        b = q.shape[0]
        k, v = cache.read(self.layer_idx, batch.decode_kv_slots)  # [B, L, kv, d]
        k, v = k.transpose(1, 2), v.transpose(1, 2)
        group = self.num_heads // self.num_kv_heads
        grouped = q.reshape(b, self.num_kv_heads, group, self.head_dim)
        # every row attending over all `longest` slots (always so at batch 1) needs no mask
        mask = None if batch.decode_uniform else batch.decode_mask
        out = F.scaled_dot_product_attention(grouped, k, v, attn_mask=mask)
        return out.reshape(b, self.num_heads, self.head_dim)
