"""bench/phone_agent.py's report on the console: the turns (issue 12 point 5 (a)) and the
baseline's rounds and stages (point 5 (b)), each against its target."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from bench.report import results_table


def print_report(report: dict[str, Any], console: Console) -> None:
    """The turns table and their ratio against its target, then the baseline's."""
    title = (
        f"phone agent: {report['turns']} turns, a new 1080x2400 screenshot per turn "
        f"(max_pixels {report['max_pixels'] or 'default'}), earlier ones dropped, "
        f"{report['max_tokens']} tokens per answer, on {report['device']}"
    )
    columns = ("conc", "turn", "TTFT p50 s", "TTFT max s", "prompt", "reusable", "cached")
    turns = results_table(title, columns)
    for cell in report["cells"]:
        for t in cell["turns"]:
            turns.add_row(
                str(cell["concurrency"]), str(t["turn"]), f"{t['ttft_p50_s']:.2f}",
                f"{t['ttft_max_s']:.2f}", f"{t['prompt_tokens_mean']:.0f}",
                f"{t['reusable_tokens_mean']:.0f}", f"{t['cached_tokens_mean']:.0f}",
            )  # fmt: skip
    if report["cells"]:
        console.print(turns)
    for cell in report["cells"]:
        console.print(
            f"concurrency {cell['concurrency']}: turn {len(cell['turns'])} / turn 1 TTFT "
            f"{cell['last_vs_first_ttft']:.2f}x (target <= 1.5x); cached / reusable prompt "
            f"tokens {cell['cache_hit_fraction']:.0%}"
        )
    print_baseline(report["baseline"], console)


def print_baseline(baseline: dict[str, Any], console: Console) -> None:
    """Each round's TTFTs and ratios, then the stages side by side, then the verdict."""
    if not baseline["rounds"]:
        return
    columns = ("round", "order", "stack", "hop by hop", "in proc", "wall x", "CPU x")
    rounds = results_table("an image request's TTFT (s): services vs in process", columns, 2)
    for k, r in enumerate(baseline["rounds"]):
        services, local = r["services"], r["in_process"]
        rounds.add_row(
            str(k), "/".join(leg[:3] for leg in r["order"]), f"{services['ttft_s']:.2f}",
            f"{r['rpc']['ttft_s']:.2f}", f"{local['ttft_s']:.2f}",
            f"{services['ttft_s'] / local['ttft_s']:.2f}",
            f"{services['cpu_s'] / local['cpu_s']:.2f}",
        )  # fmt: skip
    console.print(rounds)
    wall, cpu = baseline["in_process_wall_p50_s"], baseline["in_process_cpu_p50_s_by_stage"]
    hops, processes = baseline["rpc_wall_p50_s"], baseline["services_cpu_by_process_p50_s"]
    stage_columns = ("stage", "in proc", "in proc CPU", "services", "stack CPU")
    table = results_table("per stage, medians over the rounds (s)", stage_columns, 1)
    rows = (
        ("decode+tower | vision", ("preprocess", "tower"), ("vision_rpc",), "vision"),
        ("fusion", ("fusion",), ("fusion",), None),
        ("prompt", ("prompt",), ("prompt",), None),
        ("prefill | decoder", ("prefill",), ("decoder_rpc",), "decoder"),
    )
    for name, local_stages, hop_stages, process in rows:
        table.add_row(
            name, f"{sum(wall[s] for s in local_stages):.3f}",
            f"{sum(cpu[s] for s in local_stages):.3f}",
            f"{sum(hops[s] for s in hop_stages):.3f}",
            f"{processes[process]:.3f}" if process else "",
        )  # fmt: skip
    table.add_row("gateway (HTTP..SSE)", "", "", f"{baseline['gateway_share_p50_s']:.3f}",
                  f"{processes['gateway']:.3f}")  # fmt: skip
    table.add_row("TTFT", f"{baseline['in_process_ttft_p50_s']:.3f}",
                  f"{baseline['in_process_cpu_p50_s']:.3f}",
                  f"{baseline['services_ttft_p50_s']:.3f}",
                  f"{baseline['services_cpu_p50_s']:.3f}")  # fmt: skip
    console.print(table)
    w, c = baseline["services_vs_in_process"], baseline["services_vs_in_process_cpu"]
    console.print(
        f"services / in process over {len(baseline['rounds'])} rounds: wall {w['p50']:.2f}x "
        f"(quartiles {w['p25']:.2f}-{w['p75']:.2f}, range {w['min']:.2f}-{w['max']:.2f}; "
        f"target <= 1.25x), CPU {c['p50']:.2f}x ({c['p25']:.2f}-{c['p75']:.2f}, "
        f"{c['min']:.2f}-{c['max']:.2f}); the idle stack burns "
        f"{baseline['stack_idle_cpu_per_s']:.3f} CPU s/s"
    )
    wire = baseline.get("wire")
    if wire:
        console.print(
            f"serialising alone: patch states {wire['patch_states_bytes'] / 1e6:.2f} MB in "
            f"{wire['patch_states_s'] * 1e3:.1f} ms, GenerateRequest "
            f"{wire['generate_request_bytes'] / 1e6:.2f} MB in "
            f"{wire['generate_request_s'] * 1e3:.1f} ms"
        )
