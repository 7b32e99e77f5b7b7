"""The serving forward computes the same logits as transformers' Glm4ForCausalLM (fp32)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import DynamicCache, Glm4ForCausalLM

from services.decoder.kv_cache import ForwardBatch, KVCache, PrefillSpan
from services.decoder.model import Glm4ForCausalLM as ServingGlm4

TOLERANCE = 1e-4
REGION = 128  # each test sequence owns cache slots [i * REGION, (i + 1) * REGION)


@pytest.fixture(scope="module")
def reference(tiny_checkpoint: Path) -> Glm4ForCausalLM:
    """transformers' model of the same checkpoint, in FP32."""
    return Glm4ForCausalLM.from_pretrained(tiny_checkpoint, dtype=torch.float32).eval()


def new_cache(model: ServingGlm4, sequences: int) -> KVCache:
    c = model.config
    return KVCache(
        num_layers=c.num_hidden_layers, num_kv_heads=c.num_key_value_heads, head_dim=c.head_dim,
        num_blocks=sequences, block_size=REGION, dtype=torch.float32, device=torch.device("cpu"),
    )  # fmt: skip


def slots(seq: int, start: int, end: int) -> torch.Tensor:
    return torch.arange(seq * REGION + start, seq * REGION + end)


def prefill(
    model: ServingGlm4,
    cache: KVCache,
    chunks: list[tuple[int, int, torch.Tensor]],
    positions: torch.Tensor | None = None,
    embeds: torch.Tensor | None = None,
) -> torch.Tensor:
    """Logits of every packed token; chunks are (sequence, tokens already cached, ids)."""
    spans, start = [], 0
    for seq, context, ids in chunks:
        n = len(ids)
        spans.append(PrefillSpan(start, start + n, context, slots(seq, 0, context + n)))
        start += n
    batch = ForwardBatch(
        write_slots=torch.cat([slots(s, c, c + len(ids)) for s, c, ids in chunks]),
        prefills=tuple(spans),
        decode_start=start,
    )
    if positions is None:
        positions = torch.cat([torch.arange(c, c + len(ids)) for _, c, ids in chunks])
    ids = torch.cat([ids for _, _, ids in chunks])
    with torch.inference_mode():
        return model.logits(model(ids, positions, batch, cache, inputs_embeds=embeds))


def decode(
    model: ServingGlm4,
    cache: KVCache,
    tokens: torch.Tensor,
    lengths: list[int],
    positions: torch.Tensor | None = None,
) -> torch.Tensor:
    """One batched decode step: token i goes to sequence i, which has lengths[i] cached (and
    by default the position lengths[i])."""
    longest = max(lengths) + 1
    kv = torch.stack([slots(i, 0, longest) for i in range(len(lengths))])
    mask = torch.arange(longest)[None, :] <= torch.tensor(lengths)[:, None]
    batch = ForwardBatch(
        write_slots=torch.stack([slots(i, n, n + 1)[0] for i, n in enumerate(lengths)]),
        prefills=(),
        decode_start=0,
        decode_kv_slots=kv,
        decode_mask=mask[:, None, None, :],
        decode_uniform=len(set(lengths)) == 1,  # as packing sets it: then no mask is applied
    )
    with torch.inference_mode():
        positions = torch.tensor(lengths) if positions is None else positions
        return model.logits(model(tokens, positions, batch, cache))


def test_prefill_then_32_cached_decode_steps_match_transformers(
    reference: Glm4ForCausalLM, tiny_model: ServingGlm4
) -> None:
    generator = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 128, (n,), generator=generator) for n in (5, 11, 23)]
    cache = new_cache(tiny_model, len(prompts))

    ours = prefill(tiny_model, cache, [(i, 0, p) for i, p in enumerate(prompts)])
    hf_caches, offset = [], 0
    with torch.no_grad():
        for p in prompts:
            hf_cache = DynamicCache(config=reference.config)
            expected = reference(p[None], cache=hf_cache, use_cache=True).logits[0]
            torch.testing.assert_close(
                ours[offset : offset + len(p)], expected, atol=TOLERANCE, rtol=0
            )
            hf_caches.append(hf_cache)
            offset += len(p)

        lengths = [len(p) for p in prompts]
        for _ in range(32):
            tokens = torch.randint(3, 128, (len(prompts),), generator=generator)
            ours = decode(tiny_model, cache, tokens, lengths)
            for i, token in enumerate(tokens):
                expected = reference(token.view(1, 1), cache=hf_caches[i], use_cache=True).logits[
                    0, 0
                ]
                torch.testing.assert_close(ours[i], expected, atol=TOLERANCE, rtol=0)
            lengths = [n + 1 for n in lengths]


def test_one_sequence_decodes_unmasked_and_matches_transformers(
    reference: Glm4ForCausalLM, tiny_model: ServingGlm4
) -> None:
    generator = torch.Generator().manual_seed(4)
    prompt = torch.randint(3, 128, (9,), generator=generator)
    cache = new_cache(tiny_model, 1)
    prefill(tiny_model, cache, [(0, 0, prompt)])
    hf_cache = DynamicCache(config=reference.config)
    with torch.no_grad():
        reference(prompt[None], cache=hf_cache, use_cache=True)
        for n in range(len(prompt), len(prompt) + 8):
            token = torch.randint(3, 128, (1,), generator=generator)
            ours = decode(tiny_model, cache, token, [n])
            expected = reference(token.view(1, 1), cache=hf_cache, use_cache=True).logits[0]
            torch.testing.assert_close(ours, expected, atol=TOLERANCE, rtol=0)


def test_chunked_prefill_matches_one_pass(tiny_model: ServingGlm4) -> None:
    prompt = torch.randint(3, 128, (30,), generator=torch.Generator().manual_seed(2))
    whole = prefill(tiny_model, new_cache(tiny_model, 1), [(0, 0, prompt)])
    cache = new_cache(tiny_model, 1)
    parts = [
        prefill(tiny_model, cache, [(0, a, prompt[a:b])]) for a, b in ((0, 7), (7, 19), (19, 30))
    ]
    torch.testing.assert_close(torch.cat(parts), whole, atol=TOLERANCE, rtol=0)


def test_explicit_positions_and_input_embeddings_match_transformers(
    reference: Glm4ForCausalLM, tiny_model: ServingGlm4
) -> None:
    generator = torch.Generator().manual_seed(3)
    ids = torch.randint(3, 128, (12,), generator=generator)
    positions = torch.tensor([0, 1, 2, 3, 3, 3, 3, 4, 5, 9, 10, 11])
    embeds = torch.randn(12, tiny_model.config.hidden_size, generator=generator)
    ours = prefill(tiny_model, new_cache(tiny_model, 1), [(0, 0, ids)], positions, embeds)
    with torch.no_grad():
        expected = reference(inputs_embeds=embeds[None], position_ids=positions[None]).logits[0]
    torch.testing.assert_close(ours, expected, atol=TOLERANCE, rtol=0)


def test_the_decode_masks_bias_attends_exactly_as_the_boolean_mask() -> None:
    generator = torch.Generator().manual_seed(6)
    q = torch.randn(4, 2, 3, 16, generator=generator).bfloat16()
    k, v = torch.randn(2, 4, 2, 9, 16, generator=generator).bfloat16()
    mask = (torch.arange(9) < torch.tensor([9, 4, 1, 7])[:, None])[:, None, None, :]
    batch = ForwardBatch(torch.zeros(4, dtype=torch.long), (), 0, torch.zeros(4, 9), mask)
    bias = batch.for_attention(torch.bfloat16, 2, 0).decode_mask
    assert bias is not None and bias.dtype == torch.bfloat16
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert torch.equal(F.scaled_dot_product_attention(q, k, v, attn_mask=bias), expected)
