"""bench/compare.py's own logic, without building llama.cpp: its arguments and its ratios."""

from __future__ import annotations

import pytest

from bench.compare import TARGETS, compare, main


def cell(concurrency: int, tok_s: float, ttft_s: float) -> dict[str, float]:
    return {"concurrency": concurrency, "output_tokens_per_s": tok_s, "ttft_p50_s": ttft_s}


def test_ratios_are_ours_over_llama_servers_for_every_target() -> None:
    ours = [cell(1, 80, 0.05), cell(16, 440, 0.25)]
    theirs = [cell(1, 160, 0.04), cell(16, 440, 1.0)]
    ratios = compare(ours, theirs)
    assert ratios == {"tok_s_c1": 0.5, "tok_s_c16": 1.0, "ttft_p50_c16": 0.25}
    assert set(ratios) == set(TARGETS)


def test_fewer_requests_than_the_largest_concurrency_are_refused() -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--requests", "8"])
    assert exit_info.value.code == 2
