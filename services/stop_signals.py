"""SIGINT and SIGTERM as a stop request that a waiting main thread sees at once, however many
arrive and whenever they do.

A Python signal handler runs in the main thread between two bytecodes, possibly while that
thread holds a lock, and again while an earlier handler is still running. So the handler here
only stores the signal's number; the waking is done by the interpreter's C-level handler, which
writes the number to a wakeup fd (``signal.set_wakeup_fd``) that ``wait`` selects on. A handler
that took a lock (``threading.Event.set``) could deadlock the process against itself: `make up`
hung that way when its process group got SIGTERM, because make forwards the signal and the
launcher got two.
"""

from __future__ import annotations

import os
import select
import signal
from types import FrameType, TracebackType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """While entered (main thread only), the first SIGINT/SIGTERM sets ``received`` and ends
    ``wait``; later ones are copies of the same stop request. On exit the previous handlers come
    back, unless a stop arrived: then both stay ignored."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._read_fd, self._write_fd = os.pipe()
        for fd in (self._read_fd, self._write_fd):
            os.set_blocking(fd, False)
        self._previous_handlers: dict[int, signal._HANDLER] = {}
        self._previous_wakeup_fd = -1

    def _record(self, signum: int, _frame: FrameType | None) -> None:
        # Nothing else: no lock, no I/O, no allocation that could wait on another thread. The
        # first signal is the one the stop is made of (it is what the children are sent); a
        # copy may land after the stop is over, so keeping the last would be a race.
        if self.received is None:
            self.received = signum

    def __enter__(self) -> StopSignals:
        self._previous_wakeup_fd = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        for sig in STOP_SIGNALS:
            self._previous_handlers[sig] = signal.signal(sig, self._record)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for sig, handler in self._previous_handlers.items():
            # Once a stop is under way, later copies of it (make forwards the signal, a user
            # presses Ctrl-C again) must not kill the exiting process with another status.
            signal.signal(sig, handler if self.received is None else signal.SIG_IGN)
        signal.set_wakeup_fd(self._previous_wakeup_fd)
        os.close(self._read_fd)
        os.close(self._write_fd)

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True as soon as a stop signal has arrived."""
        if self.received is None:
            # A signal that came just before the select has already written its byte.
            readable, _, _ = select.select([self._read_fd], [], [], seconds)
            if readable:
                self._drain()
        return self.received is not None

    def _drain(self) -> None:
        try:
            while os.read(self._read_fd, 512):
                pass
        except BlockingIOError:
            pass
