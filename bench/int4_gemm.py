"""One GPTQ layer's CPU paths per call: the fused int4 GEMM on AMX against torch's int4 kernel.

For each weight shape (default: the bench decoder's gate_up, down, qkv and o; ``--shapes``
takes NxK ones) and each row count, the same random 4-bit weight in torch's int4 packing runs
through the fused kernel (services/decoder/int4_amx.py), torch's ``_weight_int4pack_mm_for_cpu``
(the baseline) and, from ``--unpacked-from`` rows, the unpacking path of int4_dequant; the
paths alternate in one process, so load from other processes hits them alike. A table of the
median ms per call and fused / int4 kernel, and JSON. This is where ``int4_amx.FUSED_ROWS``
and the table in int4_amx's docstring come from. Needs an AMX CPU and a C++ compiler.

    python -m bench.int4_gemm [--quick] [--rows 1 8 16 32 112 272] [--shapes 5632x1024 ...]
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from rich.console import Console

from bench.report import BenchParser, results_table, write_report
from services.decoder import int4_amx
from services.decoder.int4_dequant import dequantized_mm

GROUP = 128
BENCH_SHAPES = ["5632x1024", "1024x2816", "1280x1024", "1024x1024"]  # gate_up, down, qkv, o


def weight(n: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random codes in the int4 kernel's packing and bf16 (scale, zero) per group of 128."""
    codes = torch.randint(0, 16, (n, k), dtype=torch.int32)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
    scales = torch.rand(k // GROUP, n) / 32 + 1e-3
    zeros = torch.randn(k // GROUP, n) / 64
    return packed, torch.stack([scales, zeros], dim=-1).to(torch.bfloat16)


def median_ms(paths: dict[str, Callable[[], torch.Tensor]], rounds: int) -> dict[str, float]:
    """Each path's median over ``rounds`` rounds, the paths alternating within a round."""
    for path in paths.values():
        path()  # first calls build kernels and buffers
    times: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(rounds):
        for name, path in paths.items():
            started = time.perf_counter()
            path()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(ts) * 1e3 for name, ts in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = BenchParser("int4_gemm", __doc__, quick={"rows": [1, 16, 112], "rounds": 5})
    parser.add_argument("--shapes", nargs="+", default=BENCH_SHAPES, help="NxK weights")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 8, 16, 32, 112, 272])
    parser.add_argument("--rounds", type=int, default=15, help="alternated calls per path")
    parser.add_argument("--unpacked-from", type=int, default=112, help="rows to time it from")
    args = parser.parse(argv)
    console = Console()
    if args.device != "cpu" or not int4_amx.available():
        console.print("the fused int4 GEMM runs on an AMX CPU with a C++ compiler: not here")
        return 1
    results: list[dict[str, Any]] = []
    for shape in args.shapes:
        n, k = (int(side) for side in shape.split("x"))
        packed, scales_and_zeros = weight(n, k)
        for rows in args.rows:
            x = torch.randn(rows, k).to(torch.bfloat16)
            int4 = torch.ops.aten._weight_int4pack_mm_for_cpu
            paths: dict[str, Callable[[], torch.Tensor]] = {
                "fused": functools.partial(int4_amx.int4_mm, x, packed, scales_and_zeros),
                "int4": functools.partial(int4, x, packed, GROUP, scales_and_zeros),
            }
            if rows >= args.unpacked_from:
                paths["unpacked"] = functools.partial(
                    dequantized_mm, x, packed, scales_and_zeros, GROUP
                )
            ms = median_ms(paths, args.rounds)
            results.append({"shape": shape, "rows": rows, "ms": ms})
    table = results_table(
        f"ms per call, {torch.get_num_threads()} threads (median of {args.rounds})",
        ["weight", "rows", "fused", "int4 kernel", "unpacked", "fused / int4"],
        left=1,
    )
    for result in results:
        ms = result["ms"]
        unpacked = f"{ms['unpacked']:.2f}" if "unpacked" in ms else ""
        ratio = f"{ms['fused'] / ms['int4']:.2f}x"
        table.add_row(
            result["shape"], str(result["rows"]), f"{ms['fused']:.2f}", f"{ms['int4']:.2f}",
            unpacked, ratio,
        )  # fmt: skip
    console.print(table)
    wins = [r for r in results if r["ms"]["fused"] < r["ms"]["int4"]]
    crossover = {
        shape: min((r["rows"] for r in wins if r["shape"] == shape), default=None)
        for shape in args.shapes
    }
    console.print(f"fewest rows where the fused kernel wins, per weight: {crossover}")
    report = {"bench": "int4_gemm", "group": GROUP, "results": results, "crossover": crossover}
    return write_report(args.output, report, console)


if __name__ == "__main__":
    raise SystemExit(main())
