"""End-to-end serving: the real stack (`autoglm up`) driven by the openai SDK, as vLLM's
benchmark_serving drives vLLM.

The stack runs as a subprocess on free loopback ports, on the default bundle (built and
GPTQ-quantized in a temporary folder) or ``--bundle``. Streaming chat completions in the phone
agent's shape, a shared system prompt (so the decoder's prefix cache is exercised) and a distinct
user message, in three mixes: text only, text + one image, text + one image + one 2-second clip.
Each mix runs ``--requests`` requests at each ``--concurrency`` (1, the baseline, and 8), each
request ``--max-tokens`` tokens with EOS ignored, greedy, with logprobs so that every token shows
in the stream. Per request: time to the first streamed token, the mean time per token after it
(ITL: a chunk may carry several tokens when the stream fell behind), end-to-end latency and the
usage chunk's token counts (which must equal the tokens streamed). Per cell: requests/s, output
tokens/s and its ratio to concurrency 1 in the same run, TTFT p50/p90, ITL p50, the cached
fraction of the prompt tokens, the gateway's and the decoder's CPU time per output token. GET
/metrics is scraped before and after; its counters' deltas must equal what the client counted.
``--mixes text`` runs the text mix alone.
PhoneAgent's multi-turn conversation on the phone preset is bench/phone_agent.py.

    python -m bench.serve [--quick] [--requests 8] [--concurrency 1 8] [--max-tokens 64]
                          [--mixes text image image+audio]
                          [--bundle PATH] [--device cpu] [--output PATH]
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import openai
from rich.console import Console

from bench.bundles import prepared_bundle
from bench.chat_requests import first_turn, user_content
from bench.chat_stream import REQUEST_TIMEOUT_S, one_request, run_cell, summarize
from bench.cpu import cpu_seconds
from bench.device_check.stack import LaunchedStack
from bench.report import BenchParser, results_table, write_report
from bench.serve_metrics import cross_check, scrape
from bench.served_stack import launched_stack
from bundle.layout import Bundle

MIXES = ("text", "image", "image+audio")  # every request has text; these add media
WARM_UP_INDEX = 1_000_000  # the warm-up's tasks and media differ from every measured request's


async def measure(
    stack: LaunchedStack, model: str, args: argparse.Namespace, console: Console
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    url = stack.url
    pids = {name: stack.up.children()[name] for name in ("gateway", "decoder")}
    async with openai.AsyncOpenAI(
        base_url=f"{url}/v1", api_key="EMPTY", max_retries=0, timeout=REQUEST_TIMEOUT_S
    ) as client:
        # Warm-up, one request per mix: first calls allocate and pick kernels, and the system
        # prompt enters the prefix cache as it would after an agent's first step.
        for number, mix in enumerate(args.mixes):
            warm_up = first_turn(user_content(mix, WARM_UP_INDEX + number))
            await one_request(client, model, warm_up, 4)
        before = scrape(url)
        cells: list[dict[str, Any]] = []
        index = 0  # every measured request gets its own task and media
        for mix in args.mixes:
            for concurrency in args.concurrency:
                contents = [user_content(mix, index + i) for i in range(args.requests)]
                index += args.requests
                cpu_before = cpu_seconds(pids)
                samples, seconds = await run_cell(
                    client, model, contents, concurrency, args.max_tokens
                )
                cell = summarize(mix, concurrency, samples, seconds)
                tokens = sum(s.completion_tokens for s in samples)
                cell["cpu_ms_per_token"] = {
                    name: (used - cpu_before[name]) / tokens * 1e3
                    for name, used in cpu_seconds(pids).items()
                }
                baseline = next(c for c in [*cells, cell] if c["mix"] == mix)
                cell["throughput_ratio_vs_concurrency_1"] = (
                    cell["output_tokens_per_s"] / baseline["output_tokens_per_s"]
                )
                cells.append(cell)
                console.print(
                    f"{mix} at concurrency {concurrency}: "
                    f"{cell['output_tokens_per_s']:.1f} output tok/s, CPU per token "
                    + ", ".join(f"{k} {v:.2f} ms" for k, v in cell["cpu_ms_per_token"].items())
                )
        return cells, cross_check(before, scrape(url), cells)


def print_table(report: dict[str, Any], console: Console) -> None:
    # Short headers: a console that is not a terminal is 80 columns wide.
    columns = ("mix", "conc", "req/s", "tok/s", "vs c1", "TTFT\np50/p90", "ITL\np50", "E2E\np50",
               "prompt", "cached")  # fmt: skip
    title = (
        f"serve: the real stack via the openai SDK, streaming, {report['max_tokens']} tokens per "
        f"request (EOS ignored), {report['requests']} requests per row, on {report['device']}; "
        "latencies in ms"
    )
    table = results_table(title, columns, left=1, collapse_padding=True, pad_edge=False)
    for c in report["cells"]:
        itl = f"{c['itl_p50_s'] * 1e3:.1f}" if c["itl_p50_s"] is not None else "-"
        table.add_row(
            c["mix"], str(c["concurrency"]), f"{c['requests_per_s']:.2f}",
            f"{c['output_tokens_per_s']:.0f}", f"{c['throughput_ratio_vs_concurrency_1']:.2f}x",
            f"{c['ttft_p50_s'] * 1e3:.0f}/{c['ttft_p90_s'] * 1e3:.0f}", itl,
            f"{c['e2e_p50_s'] * 1e3:.0f}", f"{c['prompt_tokens_mean']:.0f}",
            f"{c['cached_fraction']:.0%}",
        )  # fmt: skip
    console.print(table)
    metrics = report["metrics"]
    client, server = metrics["client"], metrics["server"]
    pairs = ", ".join(f"{key} {client[key]:.0f}/{server[key]:.0f}" for key in server)
    verdict = "agree" if metrics["agree"] else "[bold red]DISAGREE"
    console.print(f"/metrics deltas vs client sums (client/server): {pairs}: {verdict}")


def main(argv: list[str] | None = None) -> int:
    parser = BenchParser(
        "serve",
        __doc__,
        quick={"requests": 2, "max_tokens": 16, "concurrency": [1, 2]},
        bundle_help="a quantized bundle (default: build one)",
        device_help="every service's device (cpu, cuda:N)",
    )
    parser.add_argument("--requests", type=int, default=8, help="requests per mix and concurrency")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens per request")
    parser.add_argument("--mixes", nargs="+", choices=MIXES, default=list(MIXES))
    args = parser.parse(argv)
    args.concurrency = sorted(set(args.concurrency))
    if args.concurrency[0] != 1:
        parser.error("--concurrency must include 1: the baseline of the throughput ratios")
    if args.requests < args.concurrency[-1]:
        parser.error("--requests must be at least the highest --concurrency")
    if args.max_tokens < 2:
        parser.error("--max-tokens must be at least 2: ITL needs two tokens")
    console = Console()

    log = args.output.with_name(f"{args.output.stem}-up.log")
    with prepared_bundle(args.bundle, console, preset="default") as bundle:
        model = Bundle.load(bundle).served_model_name
        with launched_stack(bundle, args.device, log, console) as stack:
            cells, metrics = asyncio.run(measure(stack, model, args, console))
    report: dict[str, Any] = {
        "bench": "serve",
        "bundle": str(args.bundle or "default (built, GPTQ 4-bit)"),
        "model": model,
        "device": args.device,
        "max_tokens": args.max_tokens,
        "requests": args.requests,
        "concurrency": args.concurrency,
        "mixes": args.mixes,
        "cells": cells,
        "metrics": metrics,
    }
    print_table(report, console)
    return write_report(args.output, report, console, ok=metrics["agree"])


if __name__ == "__main__":
    raise SystemExit(main())
