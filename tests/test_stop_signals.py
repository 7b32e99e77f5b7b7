"""Stop signals: the handler only records the signal, and a waiting main thread wakes at once.

A handler that calls anything (``threading.Event.set`` takes a lock) can deadlock against the
code it interrupted, as `make up` did when its process group got SIGTERM twice.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from types import FrameType
from typing import Any

import pytest

from services.stop_signals import STOP_SIGNALS, StopSignals


@pytest.fixture(autouse=True)
def keep_the_test_process_handlers() -> Iterator[None]:
    """A test that receives a stop leaves both signals ignored (by design): undo that here."""
    before = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    yield
    for sig, handler in before.items():
        signal.signal(sig, handler)


def test_the_handler_calls_nothing() -> None:
    calls: list[str] = []

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event == "call":
            calls.append(frame.f_code.co_name)
        elif event == "c_call":
            calls.append(getattr(arg, "__qualname__", repr(arg)))

    with StopSignals() as signals:
        for sig in STOP_SIGNALS:
            handler = signal.getsignal(sig)
            assert callable(handler)
            sys.setprofile(profile)
            try:
                handler(sig, None)
            finally:
                sys.setprofile(None)
            assert signals.received == STOP_SIGNALS[0]  # the first one stays
    # The handler's own frame, then nothing: no lock, no I/O, no other function (the one
    # C call seen is the profiler being switched off).
    assert calls == ["_record", "setprofile"] * 2


def test_a_signal_ends_the_wait_at_once() -> None:
    with StopSignals() as signals:
        assert not signals.wait(0.01)
        timer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM))
        started = time.monotonic()
        timer.start()
        assert signals.wait(30)
        assert time.monotonic() - started < 5
        assert signals.received == signal.SIGTERM
        # It stays requested; later waits return at once.
        assert signals.wait(30)


def test_many_signals_are_one_stop_request_and_the_first_is_kept() -> None:
    with StopSignals() as signals:
        for _ in range(200):
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGTERM)
        assert signals.wait(5)
        assert signals.received == signal.SIGINT


def test_the_previous_handlers_come_back_when_no_stop_arrived() -> None:
    before = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    with StopSignals():
        assert all(signal.getsignal(sig) != before[sig] for sig in STOP_SIGNALS)
    assert {sig: signal.getsignal(sig) for sig in STOP_SIGNALS} == before


def test_after_a_stop_later_copies_of_it_are_ignored() -> None:
    """`make up` forwards the signal and a storm may outlast the stop: a copy arriving while
    the process exits must not kill it with another status."""
    with StopSignals() as signals:
        os.kill(os.getpid(), signal.SIGTERM)
        assert signals.wait(5)
    assert all(signal.getsignal(sig) == signal.SIG_IGN for sig in STOP_SIGNALS)
    os.kill(os.getpid(), signal.SIGINT)  # would raise KeyboardInterrupt if it were not ignored
    time.sleep(0.05)
