"""GPTQLinear's CPU path for batches: a fused int4 GEMM on AMX tiles (csrc/int4_amx_gemm.cpp).

torch's int4 kernel (``_weight_int4pack_mm_for_cpu``) reads 0.5 byte per weight but computes
on AVX-512 a row at a time, so its cost grows with the rows; unpacking the codes to bf16 for
oneDNN (int4_dequant) writes and reads 8 bytes per weight per call. The fused kernel reads the
same packed codes, turns each 64-output block into bf16 integers (q - 8) once per call, in
cache, and multiplies every row by them on AMX, each group's sums scaled in fp32: the int4
kernel's weights exactly (no weight is rounded to bf16), up to fp32 rounding. The bench
decoder's four weight shapes, ms per call at 2 threads (fused / int4 kernel, and unpack +
oneDNN at 112 and 272 rows):

    rows   gate_up 5632x1024     down 1024x2816       qkv 1280x1024       o 1024x1024
      1    1.05 / 0.25           0.68 / 0.13          0.33 / 0.06         0.27 / 0.05
      8    1.03 / 0.89           0.67 / 0.45          0.32 / 0.20         0.26 / 0.16
     16    1.04 / 1.75           0.68 / 0.90          0.32 / 0.41         0.29 / 0.34
     32    0.86 / 3.48           0.52 / 1.77          0.29 / 0.80         0.24 / 0.64
    112    2.82 / 12.0 / 23.5    1.80 / 5.98 / 12.0   0.83 / 2.83 / 5.32  0.72 / 2.25 / 4.17
    272    5.99 / 29.1 / 28.2    2.95 / 14.7 / 15.8   1.68 / 6.72 / 6.36  1.37 / 5.42 / 5.15

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
    blocks = scales_and_zeros.shape[1] // 64
    codes = packed.view(blocks, x.shape[1], 32)
    result: torch.Tensor = torch.ops.autoglm.int4_amx_mm(x, codes, scales_and_zeros)
    return result
