"""The real stack (`autoglm up`) on free loopback ports for a serving bench, stopped with
nothing left behind."""

from __future__ import annotations

import signal
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console

from bench.device_check.runner import Probe
from bench.device_check.stack import STOP_TIMEOUT_S, LaunchedStack


@contextmanager
def launched_stack(
    bundle: Path,
    device: str,
    log: Path,
    console: Console,
    settings: Mapping[str, str] | None = None,
) -> Iterator[LaunchedStack]:
    """`autoglm up` on free ports until the block ends, then SIGTERM (and nothing left behind):
    ``stack.url``, its services' pids (``stack.up.children()``); ``settings``: AUTOGLM_*
    variables for the services."""
    stack = LaunchedStack(bundle, device, log, settings)
    try:
        probe = Probe()
        stack.check_ready(probe)
        if probe.problems:
            raise RuntimeError(f"the stack is not serving: {probe.problems}\n{stack.up.log_tail()}")
        console.print(f"stack ready at {stack.url} after {probe.figures['ready_s']:.1f} s")
        yield stack
    finally:
        stack.up.process.send_signal(signal.SIGTERM)
        try:
            stack.up.wait(STOP_TIMEOUT_S)
        except TimeoutError:
            console.print(f"up still running {STOP_TIMEOUT_S:.0f} s after SIGTERM; killing it")
        stack.up.kill_everything()
