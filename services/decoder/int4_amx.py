"""GPTQLinear's CPU path for batches: a fused int4 GEMM on AMX tiles (csrc/int4_amx_gemm.cpp).

torch's int4 kernel (``_weight_int4pack_mm_for_cpu``) reads 0.5 byte per weight but computes
on AVX-512 a row at a time, so its cost grows with the rows; unpacking the codes to bf16 for
oneDNN (int4_dequant) writes and reads 8 bytes per weight per call. The fused kernel reads the
same packed codes, turns each 64-output block into bf16 integers (q - 8) once per call, in
cache, and multiplies every row by them on AMX, each group's sums scaled in fp32: the int4
kernel's weights exactly (no weight is rounded to bf16), up to fp32 rounding. The bench
decoder's four weight shapes, ms per call at 2 threads (``python -m bench.int4_gemm``: fused /
int4 kernel, and the unpacking path at 112 and 272 rows):

    rows   gate_up 5632x1024     down 1024x2816       qkv 1280x1024       o 1024x1024
      1    0.86 / 0.25           0.46 / 0.14          0.20 / 0.06         0.16 / 0.05
      8    0.94 / 0.94           0.48 / 0.48          0.22 / 0.22         0.17 / 0.16
     16    0.95 / 1.76           0.48 / 0.90          0.22 / 0.42         0.19 / 0.32
     32    0.94 / 3.50           0.47 / 1.76          0.25 / 0.84         0.18 / 0.64
    112    2.84 / 12.4 / 27.2    1.55 / 6.12 / 13.6   0.73 / 2.76 / 6.29  0.58 / 2.20 / 4.94
    272    5.92 / 30.1 / 32.5    3.20 / 15.1 / 18.0   1.42 / 6.71 / 7.94  1.12 / 5.30 / 6.21

so from ``FUSED_ROWS`` rows on a call takes the fused kernel (c=16 decode batches, prefill),
below it the int4 kernel. The kernel is C++ built at load by torch's extension builder (a C++
compiler and ninja, ~15 s the first time, then cached on disk); where it cannot be built or
the CPU has no AMX, the unpacking of int4_dequant stays.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import torch
from torch.utils import cpp_extension

from services.decoder.int4_dequant import BLOCK_N

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("csrc") / "int4_amx_gemm.cpp"
# The instructions the kernel is written with; every AMX CPU has them. Not -march=native: a
# build cached on a volume may be loaded by another CPU model.
CFLAGS = ["-O3", "-std=c++20", "-fopenmp", "-mfma", "-mavx512f", "-mavx512bw", "-mavx512vl"]
CFLAGS += ["-mavx512bf16", "-mamx-tile", "-mamx-bf16"]
FUSED_ROWS = 12  # rows from which the fused kernel beats the int4 kernel (the table above)


@functools.cache
def available() -> bool:
    """Whether ``int4_mm`` runs here: an AMX CPU, and the kernel built and loaded (once per
    process; a failure is logged and the callers keep their other paths)."""
    if not torch.cpu._is_amx_tile_supported():
        return False
    try:
        cpp_extension.load(
            name="autoglm_int4_amx_gemm",
            sources=[str(SOURCE)],
            extra_cflags=CFLAGS,
            extra_ldflags=["-fopenmp"],
            is_python_module=False,
        )
    except Exception as error:  # compiler, ninja or loader: no common type; the rest works
        log.warning("the fused int4 GEMM is off: it could not be built here (%s)", error)
        return False
    return True


def int4_mm(x: torch.Tensor, packed: torch.Tensor, scales_and_zeros: torch.Tensor) -> torch.Tensor:
    """``x @ W^T`` in bf16 for the int4 kernel's (packed [N, K/2], scales_and_zeros [groups,
    N, 2]) weight; x is contiguous bf16 [rows, K]. Only after ``available()``."""
    # torch's packing as the kernel reads it: [64-output blocks, K, 32 bytes]
    codes = packed.view(scales_and_zeros.shape[1] // BLOCK_N, x.shape[1], BLOCK_N // 2)
    result: torch.Tensor = torch.ops.autoglm.int4_amx_mm(x, codes, scales_and_zeros)
    return result
