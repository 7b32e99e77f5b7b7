"""bench.report: the flags every benchmark shares, and --quick as one set of settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.report import BenchParser

QUICK = {"requests": 2, "concurrency": [1, 2], "minilm": False}


def parser() -> BenchParser:
    made = BenchParser("demo", "The demo benchmark.\n\nMore.", quick=QUICK)
    made.add_argument("--requests", type=int, default=8)
    made.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    made.add_argument("--no-minilm", dest="minilm", action="store_false")
    return made


def test_the_shared_flags_and_their_defaults() -> None:
    args = parser().parse([])
    assert (args.bundle, args.device, args.quick) == (None, "cpu", False)
    assert args.output == Path("bench/results/demo.json")
    assert (args.requests, args.concurrency, args.minilm) == (8, [1, 8], True)


def test_quick_replaces_its_settings_wherever_the_flags_stand() -> None:
    for argv in (["--quick", "--requests", "5"], ["--requests", "5", "--quick"]):
        args = parser().parse(argv)
        assert (args.requests, args.concurrency, args.minilm) == (2, [1, 2], False)


def test_the_help_says_what_quick_sets_as_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # one line per flag
    text = parser().format_help()
    assert "The demo benchmark." in text and "More." not in text
    assert "a short run: --requests 2, --concurrency 1 2, --no-minilm\n" in text
