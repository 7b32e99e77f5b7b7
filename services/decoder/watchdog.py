"""A watchdog on the engine thread's steps.

The decoder's heartbeats come from its event loop, so an engine thread stuck inside one step
(a kernel that never returns, a deadlock in a library) would still look alive to the gateway.
The watchdog is its own thread: it sees when the running step began, and once one step has run
for ``timeout_s`` it calls ``on_hung`` (once), which fails the engine the way a step that
raises does. A long run of quick steps never fires it: only a single step is timed.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator


class StepWatchdog:
    def __init__(
        self, timeout_s: float, on_hung: Callable[[float], None], poll_s: float | None = None
    ) -> None:
        """``on_hung(seconds)`` runs on the watchdog's thread with how long the step has run."""
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self.timeout_s = timeout_s
        self._on_hung = on_hung
        # Often enough that a hang is reported within a few percent of the timeout.
        self._poll_s = poll_s if poll_s is not None else min(timeout_s / 20, 1.0)
        self._started: float | None = None  # monotonic start of the step running now
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="decoder-watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    @contextlib.contextmanager
    def step(self) -> Iterator[None]:
        """Time the step run inside this block."""
        self._started = time.monotonic()
        try:
            yield
        finally:
            self._started = None

    def _watch(self) -> None:
        while not self._stopped.wait(self._poll_s):
            started = self._started
            if started is not None and time.monotonic() - started > self.timeout_s:
                self._on_hung(time.monotonic() - started)
                return
