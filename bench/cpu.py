"""CPU time of local processes (user + system, every thread), from /proc: per token it is a
steadier figure than wall time on a shared machine."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: Mapping[str, int]) -> dict[str, float]:
    """Each named process's CPU time so far."""
    seconds = {}
    for name, pid in pids.items():
        # fields after the command name (which may hold spaces): utime and stime are 12th, 13th
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        seconds[name] = (int(fields[11]) + int(fields[12])) / TICKS_PER_S
    return seconds
