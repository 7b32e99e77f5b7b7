"""Peak resident memory of one call, measured in this process (Linux, glibc).

Writing "5" to /proc/self/clear_refs resets the peak (VmHWM) to the current resident size, so the
growth a call causes is read directly, whatever ran in the process before it. glibc would serve
allocations of up to 32 MB from heap memory that earlier tests freed (and that still counts as
resident), hiding them: a fixed mmap threshold gives every allocation above 128 KiB fresh pages.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import re
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
STATUS = Path("/proc/self/status")
M_MMAP_THRESHOLD = -3  # mallopt's parameter number


def _kib(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", STATUS.read_text(), re.MULTILINE)
    assert match, f"{field} missing from {STATUS}"
    return int(match.group(1))


def peak_growth_bytes(call: Callable[[], T]) -> tuple[T, int]:
    """``call()``'s result and how far the process's resident memory peaked above its start."""
    assert ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, 128 * 1024) == 1
    Path("/proc/self/clear_refs").write_text("5")
    start = _kib("VmRSS")
    result = call()
    return result, (_kib("VmHWM") - start) * 1024


def in_fresh_process(function: Callable[..., T], *args: object) -> T:
    """``function(*args)`` in a new process that has run nothing before it, so no memory that
    earlier work left resident or cached (allocators, oneDNN scratchpads) can absorb its
    allocations. The process is forked from a server that has only imported the function's
    module (which must name it: a module-level function), so that import (torch, transformers:
    seconds of CPU) is paid once, not per call."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([function.__module__])
    with context.Pool(1) as pool:
        return pool.apply(function, args)
