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
the unpacked weights live in a per-thread scratch buffer, a chunk of output blocks at a time
(at most ``CHUNK_WEIGHTS`` weights, 8 bytes each: a 32000-row lm_head needs no 256 MB). The packed
layout (AVX-512 builds: per block of 64 outputs, for each input ``k`` 32 bytes whose low nibble
is output ``j`` and high nibble output ``j + 32``) is internal to torch, so ``layout_supported``
checks it against torch's own packing once per process and the path is off if it ever differs.
"""

from __future__ import annotations

import functools
import threading

import torch

BLOCK_N = 64  # outputs per block of the AVX-512 int4 packing
CHUNK_WEIGHTS = 1 << 21  # weights unpacked at a time: 2 MB of codes, 16 MB of floats
AMX_ROWS = 192  # rows from which unpacking wins on an AMX CPU (the table above)
KERNEL_DTYPE = torch.bfloat16

_scratch = threading.local()


def table_rows() -> int | None:
    """The rows per call from which ``dequantized_mm`` beats the int4 kernel on this CPU (None:
    never): AMX_ROWS where oneDNN runs bf16 on AMX tiles."""
    return AMX_ROWS if torch.cpu._is_amx_tile_supported() else None


@functools.cache
def layout_supported() -> bool:
    """Whether torch packs int4 weights here in the blocked layout ``unpack_codes`` reads."""
    n, k = 2 * BLOCK_N, 64
    generator = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 16, (n, k), dtype=torch.int32, generator=generator)
    try:
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
    except RuntimeError:
        return False
    if packed.numel() != n * k // 2 or packed.dtype != torch.uint8:
        return False
    unpacked = unpack_codes(packed, n, k, torch.empty(n * k, dtype=torch.uint8))
    return torch.equal(unpacked.permute(0, 2, 1).reshape(n, k).int(), codes)


def can_dequantize(out_features: int, device: torch.device) -> bool:
    return (
        device.type == "cpu"
        and out_features % BLOCK_N == 0
        and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        and layout_supported()
    )


def unpack_codes(packed: torch.Tensor, n: int, k: int, out: torch.Tensor) -> torch.Tensor:
    """The codes of ``n`` outputs (a multiple of 64) as uint8 [n/64, k, 64] in ``out``."""
    blocks = packed.view(n // BLOCK_N, k, BLOCK_N // 2)
    codes = out[: n * k].view(n // BLOCK_N, k, BLOCK_N)
    torch.bitwise_and(blocks, 15, out=codes[..., : BLOCK_N // 2])
    torch.bitwise_right_shift(blocks, 4, out=codes[..., BLOCK_N // 2 :])
    return codes


def _buffers(weights: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """This thread's scratch (uint8 codes, fp32 weights, bf16 high and low halves), grown to
    ``weights`` weights."""
    codes: torch.Tensor | None = getattr(_scratch, "codes", None)
    if codes is None or codes.numel() < weights:
        _scratch.codes = torch.empty(weights, dtype=torch.uint8)
        _scratch.exact = torch.empty(weights, dtype=torch.float32)
        _scratch.halves = torch.empty(2 * weights, dtype=KERNEL_DTYPE)
    return _scratch.codes, _scratch.exact, _scratch.halves


def dequantized_mm(
    x: torch.Tensor, packed: torch.Tensor, scales_and_zeros: torch.Tensor, group: int
) -> torch.Tensor:
    """``x @ W^T`` in bf16 for the int4 kernel's (packed, scales_and_zeros, group): the same
    ``(q - 8) * scale + zero`` weights, unpacked a chunk of 64-output blocks at a time.

    The int4 kernel multiplies by the exact fp32 weights; one bf16 rounding of them would move
    the outputs by ~2^-9 relative, enough to flip a near-tie between two logits, so the same
    request could decode differently alone (int4 kernel) and in a large batch (this path). So
    each weight is split into two bf16 halves, ``w = hi + lo`` to ~2^-17, and one GEMM over
    ``[x, x] @ [hi; lo]`` (twice the depth, still far cheaper than the int4 kernel at these
    rows on AMX) gives the int4 kernel's result up to summation order.
    """
    rows, k = x.shape
    n = scales_and_zeros.shape[1]
    blocks = n // BLOCK_N
    per_chunk = max(1, CHUNK_WEIGHTS // (k * BLOCK_N))
    codes_buffer, exact_buffer, halves_buffer = _buffers(min(blocks, per_chunk) * BLOCK_N * k)
    # w^T = q * scale + (zero - 8 * scale), per [group, 1, output], in fp32 as the kernel has it
    scale = scales_and_zeros[..., 0].float().unsqueeze(1)
    shift = scales_and_zeros[..., 1].float().unsqueeze(1) - 8 * scale
    doubled = torch.cat([x, x], dim=1)
    y = torch.empty(rows, n, dtype=KERNEL_DTYPE)
    packed_blocks = packed.view(blocks, k * BLOCK_N // 2)
    for start in range(0, blocks, per_chunk):
        end = min(start + per_chunk, blocks)
        size = (end - start) * BLOCK_N
        codes = unpack_codes(packed_blocks[start:end], size, k, codes_buffer)
        # [k, size]: one plain GEMM per chunk (a batched one per block would copy x per block)
        exact = exact_buffer[: size * k].view(k, size)
        exact.view(k, end - start, BLOCK_N).transpose(0, 1).copy_(codes)
        grouped = exact.view(k // group, group, size)
        columns = slice(start * BLOCK_N, end * BLOCK_N)
        torch.addcmul(shift[..., columns], grouped, scale[..., columns], out=grouped)
        halves = halves_buffer[: 2 * size * k].view(2 * k, size)
        halves[:k].copy_(exact)
        exact.sub_(halves[:k])
        halves[k:].copy_(exact)
        y[:, columns] = torch.mm(doubled, halves)
    return y
