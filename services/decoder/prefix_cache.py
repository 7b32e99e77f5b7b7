"""The chained hashes of prompt blocks, for automatic prefix caching (as vLLM's).

Every full block of a prompt has a hash chained on its parent block's hash and covering all
that determines the block's K/V: its token ids, their position ids (every row of 3-D mRoPE
positions; a block whose rows are all equal hashes as 1-D positions, which give the same K/V),
and the bytes of any multimodal embeddings spliced into it (image placeholders are the same
token for every image, so the ids alone would make two screenshots look alike). Once a
request's prompt block is written, the pool remembers it under that hash; a later prompt with
the same chain of hashes reuses the block instead of computing it again.

The pool that hands blocks out and matches these hashes is block_pool.py (pure Python).
"""

from __future__ import annotations

import hashlib
import struct

import numpy as np
import torch

from services.decoder.block_pool import BlockHash
from services.decoder.types import GenerateRequest


def block_hashes(request: GenerateRequest, block_size: int) -> tuple[BlockHash, ...]:
    """The chained hash of each full block of the request's prompt."""
    n = len(request.input_ids)
    ids = np.asarray(request.input_ids, dtype=np.int64)
    positions = np.asarray(request.positions.rows if request.positions else [range(n)])
    hashes: list[BlockHash] = []
    parent = b""
    for lo in range(0, n - block_size + 1, block_size):
        hi = lo + block_size
        h = hashlib.blake2b(parent, digest_size=16)
        h.update(ids[lo:hi].tobytes())
        rows = positions[:, lo:hi].astype(np.int64)
        h.update((rows[:1] if (rows == rows[0]).all() else rows).tobytes())
        for segment in request.segments:
            a, b = max(segment.offset, lo), min(segment.offset + segment.length, hi)
            if a < b:  # where in the block the rows go, their dtype, and their bytes
                embeds = segment.embeddings[a - segment.offset : b - segment.offset]
                h.update(struct.pack("<qq", a - lo, b - lo))
                h.update(str(embeds.dtype).encode())
                h.update(_raw_bytes(embeds))
        parent = h.digest()
        hashes.append(parent)
    return tuple(hashes)


def _raw_bytes(rows: torch.Tensor) -> bytes:
    """Any dtype (bfloat16 has no numpy twin) as its raw bytes."""
    return rows.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()
