"""Timing and agreement measures that mean the same on the CPU and on a GPU."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

WARMUP = 3


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work: CUDA kernels run asynchronously to Python."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def median_ms(run: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median wall time of ``run`` in milliseconds, after a warm-up (lazy init, autotuning)."""
    for _ in range(WARMUP):
        run()
    times = []
    for _ in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        run()
        synchronize(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


def mean_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of matching rows (last dimension), averaged, computed in fp32."""
    a, b = a.float().cpu(), b.float().cpu()
    return float(F.cosine_similarity(a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])).mean())


def relative_error(y: torch.Tensor, reference: torch.Tensor) -> float:
    """||y - ref|| / ||ref|| in fp32: bf16 rounding gives ~3e-3, a wrong layout order one."""
    y, reference = y.float().cpu(), reference.float().cpu()
    return float((y - reference).norm() / reference.norm())


def baseline_dtype(device: torch.device) -> torch.dtype:
    """The 16-bit dtype an unquantized layer would serve in: bf16, fp16 where bf16 is missing."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def release(device: torch.device) -> None:
    """Return freed device memory, so the next check starts from an empty device; reset the
    peak counter that ``peak_mib`` reads."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device: torch.device) -> float | None:
    """Most device memory this process held since the last ``release`` (CUDA only)."""
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20
