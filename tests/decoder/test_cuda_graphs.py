"""The CUDA-graph path's buckets and padding, on the CPU: a decode step padded to a bucket
(extra rows on the scratch slot, extra KV columns masked) gives its real rows the same logits
as the step unpadded. The graphs themselves run in bench/device_check on a GPU."""

from __future__ import annotations

import pytest
import torch

from services.decoder.cuda_graphs import (
    MIN_KV_BUCKET,
    ROW_BUCKETS,
    DecodeGraphs,
    bucket_length,
    bucket_rows,
    pad_decode,
)
from services.decoder.kv_cache import ForwardBatch
from services.decoder.model import Glm4ForCausalLM as ServingGlm4
from tests.decoder.test_model_parity import REGION, new_cache, prefill, slots


def test_rows_and_lengths_go_to_the_smallest_bucket_that_holds_them() -> None:
    assert [bucket_rows(n) for n in (1, 2, 3, 5, 16, 17)] == [1, 2, 4, 8, 16, 24]
    assert bucket_rows(ROW_BUCKETS[-1] + 1) is None  # past the largest: eager
    assert bucket_length(1, 4096) == MIN_KV_BUCKET
    assert bucket_length(MIN_KV_BUCKET + 1, 4096) == 2 * MIN_KV_BUCKET
    assert bucket_length(3000, 4096) == 4096
    assert bucket_length(3000, 3500) == 3500  # capped at max_model_len


def test_a_padded_decode_step_gives_the_real_rows_the_same_logits(tiny_model: ServingGlm4) -> None:
    generator = torch.Generator().manual_seed(4)
    lengths = [5, 9, 3]
    ids = [torch.randint(3, 100, (n,), generator=generator) for n in lengths]
    tokens = torch.randint(3, 100, (3,), generator=generator)
    longest = max(lengths) + 1
    batch = ForwardBatch(
        write_slots=torch.stack([slots(i, n, n + 1)[0] for i, n in enumerate(lengths)]),
        prefills=(),
        decode_start=0,
        decode_kv_slots=torch.stack([slots(i, 0, longest) for i in range(3)]),
        decode_mask=(torch.arange(longest)[None] <= torch.tensor(lengths)[:, None])[:, None, None],
    )
    positions = torch.tensor(lengths)

    def step(ids_: torch.Tensor, positions_: torch.Tensor, batch_: ForwardBatch) -> torch.Tensor:
        cache = new_cache(tiny_model, 3)
        for seq, prompt in enumerate(ids):
            prefill(tiny_model, cache, [(seq, 0, prompt)])
        with torch.inference_mode():
            return tiny_model.logits(tiny_model(ids_, positions_, batch_, cache))

    plain = step(tokens, positions, batch)
    scratch = 3 * REGION  # the cache of three regions has its scratch slot right after them
    assert new_cache(tiny_model, 3).scratch_slot == scratch
    padded = pad_decode(tokens, positions, batch, rows=8, length=32, scratch=scratch)
    assert padded[2].decode_kv_slots is not None and padded[2].decode_mask is not None
    assert padded[2].decode_kv_slots.shape == (8, 32) and padded[2].decode_mask.shape == (
        8,
        1,
        1,
        32,
    )
    out = step(*padded)
    assert out.shape[0] == 8 and bool(out.isfinite().all())
    torch.testing.assert_close(out[:3], plain, atol=1e-5, rtol=1e-5)


def test_graphs_refuse_a_cpu_model(tiny_model: ServingGlm4) -> None:
    with pytest.raises(ValueError, match="CUDA"):
        DecodeGraphs(tiny_model, new_cache(tiny_model, 1), 128)
