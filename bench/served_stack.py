"""The real stack (`autoglm up`) on free loopback ports for a serving bench, stopped with
nothing left behind."""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Callable, Coroutine, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console

from bench.bundles import prepared_bundle
from bench.device_check.runner import Probe
from bench.device_check.stack import STOP_TIMEOUT_S, LaunchedStack
from bundle.layout import Bundle


@contextmanager
def running_stack(
    bundle: Path,
    device: str,
    log: Path,
    console: Console,
    settings: Mapping[str, str] | None = None,
) -> Iterator[str]:
    """`autoglm up` on free ports until the block ends, then SIGTERM (and nothing left behind);
    ``settings``: AUTOGLM_* variables for the services."""
    with launched_stack(bundle, device, log, console, settings) as stack:
        yield stack.url


@contextmanager
def launched_stack(
    bundle: Path,
    device: str,
    log: Path,
    console: Console,
    settings: Mapping[str, str] | None = None,
) -> Iterator[LaunchedStack]:
    """running_stack's stack itself (its services' pids: ``stack.up.children()``)."""
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


Measure = Callable[
    [LaunchedStack, str, argparse.Namespace, Console],
    Coroutine[Any, Any, tuple[list[dict[str, Any]], dict[str, Any]]],
]


def serve_and_measure(
    args: argparse.Namespace, preset: str, log: Path, console: Console, measure: Measure
) -> tuple[str, list[dict[str, Any]], dict[str, Any]]:
    """--bundle (or the preset, built) served on --device while ``measure`` runs against it:
    the served model's name, the measured cells and the /metrics cross-check."""
    with prepared_bundle(args.bundle, console, preset=preset) as bundle:
        model = Bundle.load(bundle).served_model_name
        with launched_stack(bundle, args.device, log, console) as stack:
            cells, metrics = asyncio.run(measure(stack, model, args, console))
    return model, cells, metrics
