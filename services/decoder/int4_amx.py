"""GPTQLinear's CPU path for batches: a fused int4 GEMM on AMX tiles (csrc/int4_hilo_gemm.cpp).

torch's int4 kernel (``_weight_int4pack_mm_for_cpu``) reads 0.5 byte per weight but computes
on AVX-512 one row at a time, so its cost grows with the rows; unpacking the codes to bf16 for
oneDNN (int4_dequant) writes and reads 8 bytes per weight per call. The fused kernel reads the
same packed codes, dequantizes each 64-output block once per call into two bf16 halves held in
cache, and runs oneDNN's brgemm ukernel (AMX) over all the rows: the weights' exact fp32
values, as the int4 kernel has them, at a bf16 GEMM's speed. The bench decoder's four weight
shapes, ms per call at 2 threads (fused / int4 kernel / unpack + oneDNN, compiled unpacking):

    rows    gate_up 5632x1024     down 1024x2816      qkv 1280x1024     o 1024x1024
      1     1.36 / 0.20 / -       0.75 / 0.10 / -     0.31 / 0.05 / -   0.35 / 0.04 / -
     16     1.22 / 1.46 / 5.55    0.78 / 0.71 / 2.77  0.45 / 0.33 / 1.36  0.37 / 0.28 / 0.92
     32     1.82 / 2.85 / 5.77    0.92 / 1.39 / 2.91  0.60 / 0.73 / 1.24  0.29 / 0.50 / 0.94
    112     3.97 / 10.4 / 8.62    3.02 / 5.36 / 4.02  1.38 / 2.23 / 2.34  0.62 / 1.73 / 1.48
    272     9.36 / 25.7 / 13.1    5.38 / 13.2 / 3.79  1.70 / 5.26 / 1.83  2.26 / 4.61 / 2.20

so from ``FUSED_ROWS`` rows on a call takes the fused kernel, below it the int4 kernel. The
kernel is C++ built at load by torch's extension builder (a C++ compiler and ninja, ~15 s the
first time, then cached on disk); where it cannot be built or the CPU has no AMX, the eager
unpacking (int4_dequant) stays.
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
TILE_K = 32  # the kernel's depth per AMX tile: a layer's in_features must be a multiple


@functools.cache
def available() -> bool:
    """Whether ``hilo_mm`` runs here: an AMX CPU, and the kernel built and loaded (once per
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


def hilo_mm(x: torch.Tensor, packed: torch.Tensor, scales_and_zeros: torch.Tensor) -> torch.Tensor:
    """``x @ W^T`` in bf16 for the int4 kernel's (packed [N, K/2], scales_and_zeros [groups,
    N, 2]) weight; x is contiguous bf16 [rows, K]. Only after ``available()``."""
    blocks = scales_and_zeros.shape[1] // 64
    codes = packed.view(blocks, x.shape[1], 32)
    result: torch.Tensor = torch.ops.autoglm.int4_amx_mm(x, codes, scales_and_zeros)
    return result
