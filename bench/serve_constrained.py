"""The cost of a constrained request through the whole stack: streaming chat completions at
``--concurrency`` (8) via the openai SDK, free vs under a JSON schema (``response_format``), on
the real stack (`autoglm up`, the default bundle built and GPTQ-quantized, or ``--bundle``).

The schema's one free string keeps the grammar open (the widest masks), and each request samples
(temperature 1, seeded) up to ``--max-tokens``; a constrained request may close its JSON early,
so the figure is per token: the mean inter-token latency (ITL) of the constrained rounds over the
free ones, and output tokens/s. The two modes alternate round by round, so load from other
processes hits both alike. bench/constrained.py measures the decoder's side alone.

    python -m bench.serve_constrained [--quick] [--rounds 3] [--concurrency 8]
                                      [--max-tokens 64] [--bundle PATH] [--device cpu]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import time
from typing import Any

import openai
from rich.console import Console
from rich.table import Table

from bench.bundles import prepared_bundle
from bench.chat_stream import REQUEST_TIMEOUT_S
from bench.report import BenchParser, write_report
from bench.served_stack import launched_stack
from bundle.layout import Bundle

SCHEMA = {
    "type": "object",
    "properties": {"thought": {"type": "string"}, "done": {"type": "boolean"}},
    "required": ["thought", "done"],
}
MODES = {
    "free": {},
    "json_schema": {
        "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": SCHEMA}}
    },
}


async def one_request(
    client: openai.AsyncOpenAI, model: str, index: int, max_tokens: int, extra: dict[str, Any]
) -> tuple[int, list[float], float]:
    """Streamed tokens, their arrival times, and the end-to-end seconds."""
    started = time.perf_counter()
    stream = await client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": f"Task #{index}: plan the next phone step."}],
        max_tokens=max_tokens, temperature=1.0, seed=index, logprobs=True, stream=True,
        **extra,
    )  # fmt: skip
    arrivals: list[float] = []
    tokens = 0
    async for chunk in stream:
        for choice in chunk.choices:
            count = len(choice.logprobs.content or []) if choice.logprobs else 0
            if count:
                arrivals.append(time.perf_counter())
                tokens += count
    return tokens, arrivals, time.perf_counter() - started


async def run_round(
    client: openai.AsyncOpenAI, model: str, args: argparse.Namespace, mode: str, first: int
) -> dict[str, float]:
    started = time.perf_counter()
    results = await asyncio.gather(
        *(
            one_request(client, model, first + i, args.max_tokens, MODES[mode])
            for i in range(args.concurrency)
        )
    )
    seconds = time.perf_counter() - started
    gaps = [b - a for _, arrivals, _ in results for a, b in itertools.pairwise(arrivals)]
    tokens = sum(t for t, _, _ in results)
    return {"tokens": tokens, "seconds": seconds, "itl_s": statistics.mean(gaps)}


async def measure(url: str, model: str, args: argparse.Namespace) -> dict[str, Any]:
    async with openai.AsyncOpenAI(
        base_url=f"{url}/v1", api_key="EMPTY", max_retries=0, timeout=REQUEST_TIMEOUT_S
    ) as client:
        for mode in MODES:  # warm-up: kernels, and the schema's first compile
            await run_round(client, model, args, mode, 1_000_000)
        rounds: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
        for number in range(args.rounds):
            for mode in MODES:
                first = (number * len(MODES) + len(rounds[mode])) * args.concurrency
                rounds[mode].append(await run_round(client, model, args, mode, first))
    summary: dict[str, Any] = {}
    for mode, runs in rounds.items():
        tokens, seconds = sum(r["tokens"] for r in runs), sum(r["seconds"] for r in runs)
        summary[mode] = {
            "output_tokens": tokens,
            "output_tokens_per_s": tokens / seconds,
            "itl_mean_s": statistics.mean(r["itl_s"] for r in runs),
        }
    summary["itl_ratio"] = summary["json_schema"]["itl_mean_s"] / summary["free"]["itl_mean_s"]
    return summary


def print_table(report: dict[str, Any], console: Console) -> None:
    table = Table(
        title=f"a constrained request vs a free one through the stack, concurrency "
        f"{report['concurrency']}, {report['rounds']} rounds, on {report['device']}"
    )
    for column in ("mode", "tokens", "tok/s", "ITL ms"):
        table.add_column(column, justify="left" if column == "mode" else "right")
    for mode in MODES:
        cell = report["modes"][mode]
        table.add_row(
            mode, str(cell["output_tokens"]), f"{cell['output_tokens_per_s']:.1f}",
            f"{cell['itl_mean_s'] * 1e3:.1f}",
        )  # fmt: skip
    console.print(table)
    console.print(f"constrained / free inter-token latency: {report['modes']['itl_ratio']:.2f}x")


def main(argv: list[str] | None = None) -> int:
    parser = BenchParser(
        "serve_constrained",
        __doc__,
        quick={"rounds": 1, "max_tokens": 16},
        bundle_help="a quantized bundle (default: build one)",
        device_help="every service's device (cpu, cuda:N)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds per mode, alternating")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens per request at most")
    args = parser.parse(argv)
    console = Console()
    log = args.output.with_name(f"{args.output.stem}-up.log")
    with prepared_bundle(args.bundle, console) as bundle:
        model = Bundle.load(bundle).served_model_name
        with launched_stack(bundle, args.device, log, console) as stack:
            modes = asyncio.run(measure(stack.url, model, args))
    report: dict[str, Any] = {
        "bench": "serve_constrained",
        "bundle": str(args.bundle or "default (built, GPTQ 4-bit)"),
        "model": model,
        "device": args.device,
        "concurrency": args.concurrency,
        "rounds": args.rounds,
        "max_tokens": args.max_tokens,
        "modes": modes,
    }
    print_table(report, console)
    return write_report(args.output, report, console, ok=True)


if __name__ == "__main__":
    raise SystemExit(main())
