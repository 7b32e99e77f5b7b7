"""bench.int4_gemm: every path timed at every row count, and the crossover it reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import int4_gemm
from services.decoder import int4_amx

pytestmark = pytest.mark.skipif(not int4_amx.available(), reason="needs AMX and a C++ compiler")


def test_a_short_run_times_each_path_and_writes_the_crossover(tmp_path: Path) -> None:
    output = tmp_path / "int4_gemm.json"
    argv = ["--shapes", "128x256", "--rows", "1", "16", "--rounds", "2", "--unpacked-from", "16"]
    assert int4_gemm.main([*argv, "--output", str(output)]) == 0
    report = json.loads(output.read_text())
    assert [(r["shape"], r["rows"]) for r in report["results"]] == [("128x256", 1), ("128x256", 16)]
    assert set(report["results"][0]["ms"]) == {"fused", "int4"}
    assert set(report["results"][1]["ms"]) == {"fused", "int4", "unpacked"}
    assert all(ms > 0 for r in report["results"] for ms in r["ms"].values())
    assert set(report["crossover"]) == {"128x256"}
