"""The other CPU path for GPTQLinear: unpack the int4 weight to bf16 per call, then oneDNN.

torch's CPU int4 kernel (``_weight_int4pack_mm_for_cpu``) reads 0.5 byte per weight, which wins
when a call has few rows (decode), but its cost grows with the rows much faster than a bf16
GEMM's: on the bench decoder's 5632x1024 MLP it took 1.29 ms at 16 rows against 0.47 ms for
oneDNN bf16 (AMX here), and 35.9 against 13.5 ms at 512 rows. Unpacking the codes to bf16 costs
one pass over the weight per call, independent of the rows, so from some row count (prefill
chunks, large batches) unpack + bf16 GEMM is the faster path. Where that crossover lies depends
on the CPU, and measuring it at start-up took minutes under load on a shared 2-core machine, so
``table_rows`` gives it from a table instead: with AMX (oneDNN's bf16 GEMM on tiles) the two
are even at ~128-180 rows and unpacking wins from ``AMX_ROWS`` on all the bench decoder's shapes
(2 threads, a quiet 2-core host, one layer's gate_up 11264x1024 + down 1024x5632 + qkv
1536x1024 + o 1024x1024, int4 / unpacked ms: 64 rows 21.3 / 41.7, 128: 42.8 / 43.3, 192:
66.1 / 56.3, 256: 86.6 / 51.4; the whole bench decoder prefilling 16 prompts at once, int4 /
unpacked from that row count: 160 rows 286 / 304 ms, 192: 338 / 324, 240: 415 / 346), which
prefill chunks and batched prompt tails reach and decode batches do not; without AMX the bf16
GEMM is no faster than the int4 kernel and the path stays off.

The unpacking reads the int4 kernel's own packed tensor, so no second resident copy exists:
the unpacked weights are made per call, a chunk of output blocks at a time (at most
``CHUNK_WEIGHTS`` weights, 4 bytes each: a 32000-row lm_head needs no 128 MB). The packed
layout (AVX-512 builds: per block of 64 outputs, for each input ``k`` 32 bytes whose low nibble
is output ``j`` and high nibble output ``j + 32``) is internal to torch, so ``layout_supported``
checks it against torch's own packing once per process and the path is off if it ever differs.

Where the fused kernel of int4_amx builds (a C++ compiler, AMX), it takes these calls instead:
it dequantizes the same way without writing the halves to memory. This path stays for the
machines where it cannot be built.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import torch

BLOCK_N = 64  # outputs per block of the AVX-512 int4 packing
CHUNK_WEIGHTS = 1 << 21  # weights unpacked at a time: 1 MB of codes, 8 MB of bf16 halves
AMX_ROWS = 192  # rows from which eager unpacking wins on an AMX CPU (the table above)
KERNEL_DTYPE = torch.bfloat16
# oneDNN builds (JIT-compiles) a GEMM kernel for every new row count, ~25 ms per weight shape:
# a step whose row count it had not seen took ~100 ms longer on the bench decoder (one layer's
# four calls at 70 rows: 120 ms the first time, 21 ms after), and served steps' rows vary. So
# rows are padded to a multiple of ROW_BUCKET (of LARGE_ROW_BUCKET beyond LARGE_ROWS: a large
# --prefill-chunk-tokens keeps the buckets, and the start-up that builds them, bounded) and
# warm_up_gemms builds every bucket at load.
ROW_BUCKET, LARGE_ROWS, LARGE_ROW_BUCKET = 16, 512, 64


def table_rows() -> int | None:
    """The rows per call from which ``dequantized_mm`` beats the int4 kernel on this CPU (None:
    never): AMX_ROWS where oneDNN runs bf16 on AMX tiles."""
    return AMX_ROWS if torch.cpu._is_amx_tile_supported() else None


@functools.cache
def layout_supported() -> bool:
    """Whether torch packs int4 weights here in the blocked layout ``unpack_halves`` reads."""
    n, k = 2 * BLOCK_N, 64
    generator = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 16, (n, k), dtype=torch.int32, generator=generator)
    try:
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
    except RuntimeError:
        return False
    if packed.numel() != n * k // 2 or packed.dtype != torch.uint8:
        return False
    ones, zeros = torch.ones(1, 1, n), torch.zeros(1, 1, n)
    halves = unpack_halves(packed.view(n // BLOCK_N, k, BLOCK_N // 2), ones, zeros)
    return torch.equal(halves[:k].T.int(), codes)  # w = q exactly: hi is the codes, lo zero


def can_dequantize(out_features: int, device: torch.device) -> bool:
    return (
        device.type == "cpu"
        and out_features % BLOCK_N == 0
        and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        and layout_supported()
    )


def unpack_halves(blocks: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``[hi; lo]``, bf16 [2k, size], of ``w^T = q * scale + shift`` for packed 64-output
    blocks [size/64, k, 32]; scale and shift are fp32 [groups, 1, size].

    One bf16 rounding of ``w`` would move a GEMM's outputs by ~2^-9 relative, enough to flip a
    near-tie between two logits, so the same request could decode differently alone (int4
    kernel, exact fp32 weights) and in a large batch (this path). So ``w`` is split into two
    bf16 halves, ``w = hi + lo`` to ~2^-17, and ``[x, x] @ [hi; lo]`` gives the int4 kernel's
    result up to summation order.
    """
    n_blocks, k, _ = blocks.shape
    size = n_blocks * BLOCK_N
    # [blocks, k, 2, 32]: outputs j, then j + 32, by one broadcast shift
    nibbles = torch.tensor([0, 4], dtype=torch.uint8, device=blocks.device).view(1, 1, 2, 1)
    codes = (blocks.unsqueeze(2) >> nibbles) & 15
    grouped = codes.permute(1, 0, 2, 3).reshape(scale.shape[0], -1, size)  # [groups, group, size]
    exact = torch.addcmul(shift, grouped, scale).view(k, size)
    hi = exact.to(KERNEL_DTYPE)
    return torch.cat([hi, (exact - hi.float()).to(KERNEL_DTYPE)])


def chunk_blocks(blocks: int, k: int) -> int:
    """64-output blocks per unpacked chunk: the most that fit ``CHUNK_WEIGHTS`` and divide the
    weight evenly, so every chunk of a weight has one GEMM shape (one oneDNN build per row
    bucket, see ROW_BUCKET)."""
    limit = max(1, CHUNK_WEIGHTS // (k * BLOCK_N))
    return max(d for d in range(1, min(limit, blocks) + 1) if blocks % d == 0)


def padded_rows(rows: int) -> int:
    bucket = ROW_BUCKET if rows <= LARGE_ROWS else LARGE_ROW_BUCKET
    return -(-rows // bucket) * bucket


def gemm_shape(n: int, k: int) -> tuple[int, int]:
    """(depth, width) of the GEMMs ``dequantized_mm`` runs for an [n, k] weight: ``[hi; lo]``
    is twice as deep as the weight and one chunk wide."""
    return 2 * k, chunk_blocks(n // BLOCK_N, k) * BLOCK_N


def warm_up_gemms(shapes: Iterable[tuple[int, int]], rows: Iterable[int]) -> None:
    """Have oneDNN build its GEMM for each (depth, width) shape at each padded row count."""
    counts = sorted({padded_rows(r) for r in rows})
    for depth, width in set(shapes):
        halves = torch.zeros(depth, width, dtype=KERNEL_DTYPE)
        for count in counts:
            torch.mm(torch.zeros(count, depth, dtype=KERNEL_DTYPE), halves)


def dequantized_mm(
    x: torch.Tensor,
    packed: torch.Tensor,
    scales_and_zeros: torch.Tensor,
    group: int,
) -> torch.Tensor:
    """``x @ W^T`` in bf16 for the int4 kernel's (packed, scales_and_zeros, group): the same
    ``(q - 8) * scale + zero`` weights, unpacked a chunk of 64-output blocks at a time, each as
    ``[hi; lo]`` (``unpack_halves``) for one GEMM ``[x, x] @ [hi; lo]``: twice the depth, still
    far cheaper than the int4 kernel at these rows on AMX."""
    rows, k = x.shape
    n = scales_and_zeros.shape[1]
    blocks = n // BLOCK_N
    per_chunk = chunk_blocks(blocks, k)
    # w^T = q * scale + (zero - 8 * scale), per [group, 1, output], in fp32 as the kernel has it
    scale = scales_and_zeros[..., 0].float().unsqueeze(1)
    shift = scales_and_zeros[..., 1].float().unsqueeze(1) - 8 * scale
    doubled = x.new_zeros(padded_rows(rows), 2 * k)  # [x, x], padded: see ROW_BUCKET
    doubled[:rows, :k] = x
    doubled[:rows, k:] = x
    y = torch.empty(doubled.shape[0], n, dtype=KERNEL_DTYPE)
    packed_blocks = packed.view(blocks, k, BLOCK_N // 2)
    for start in range(0, blocks, per_chunk):
        columns = slice(start * BLOCK_N, (start + per_chunk) * BLOCK_N)
        chunk = packed_blocks[start : start + per_chunk]
        halves = unpack_halves(chunk, scale[..., columns], shift[..., columns])
        y[:, columns] = torch.mm(doubled, halves)
    return y[:rows]
