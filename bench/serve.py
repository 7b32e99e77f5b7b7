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
import dataclasses
import signal
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
from openai.types.chat import ChatCompletionContentPartParam, ChatCompletionMessageParam
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from bench.bundles import prepared_bundle
from bench.cpu import cpu_seconds
from bench.device_check.runner import Probe
from bench.device_check.stack import STOP_TIMEOUT_S, LaunchedStack
from bench.report import BenchParser, results_table, write_report
from bundle.layout import Bundle
from testkit.media import audio_bytes, b64, data_url, image_bytes

Content = list[ChatCompletionContentPartParam]  # one user message's parts
MIXES = ("text", "image", "image+audio")  # every request has text; these add media
AUDIO_SECONDS = 2.0
REQUEST_TIMEOUT_S = 600.0
CHAT_ROUTE = "/v1/chat/completions"
WARM_UP_INDEX = 1_000_000  # the warm-up's tasks and media differ from every measured request's
# The gateway's counters (prometheus_client adds _total) and what the client counts for each.
COUNTERS = {
    "prompt_tokens": "autoglm_prompt_tokens_total",
    "cached_tokens": "autoglm_cached_prompt_tokens_total",
    "completion_tokens": "autoglm_generation_tokens_total",
}

# the phone agent's shape: a long fixed system prompt, so the prefix cache has work
SYSTEM_PROMPT = Path(__file__).with_name("phone_agent_prompt.txt").read_text()

TASKS = (
    "Open the weather app and tell me tomorrow's forecast for {city}.",
    "Find a quiet coffee shop near {city} station on the map and save it.",
    "Book a table for two tonight at an Italian restaurant in {city}.",
    "Send a message to Li Wei saying I will arrive in {city} at seven.",
    "Search the shopping app for a phone case and sort by price, shipping to {city}.",
    "Set an alarm for six thirty and name it flight to {city}.",
    "Play the latest episode of the news podcast about {city}.",
    "Turn on dark mode in settings, then look up train times to {city}.",
)
CITIES = ("Beijing", "Shanghai", "Hangzhou", "Shenzhen", "Chengdu", "Wuhan", "Xi'an", "Nanjing")


@dataclasses.dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0
    top_p: float = 1.0
    frequency_penalty: float = 0.0


GREEDY = Sampling()


@dataclasses.dataclass(frozen=True)
class Sample:
    """One streamed request as the client saw it."""

    ttft_s: float
    itl_s: float | None  # mean time per token after the first; None with a single one
    e2e_s: float
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def user_content(mix: str, index: int) -> Content:
    """A distinct task (and, by mix, a distinct screenshot and spoken clip) per ``index``."""
    task = TASKS[index % len(TASKS)].format(city=CITIES[index // len(TASKS) % len(CITIES)])
    parts: Content = [{"type": "text", "text": f"Task #{index}: {task}"}]
    if "image" in mix:
        screen = data_url(image_bytes(size=(224, 224), seed=index), "image/png")
        parts.append({"type": "image_url", "image_url": {"url": screen}})
    if "audio" in mix:
        clip = b64(audio_bytes(AUDIO_SECONDS, seed=index % 8))
        parts.append({"type": "input_audio", "input_audio": {"data": clip, "format": "wav"}})
    return parts


def first_turn(content: Content) -> list[ChatCompletionMessageParam]:
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": content}]


async def one_request(
    client: openai.AsyncOpenAI,
    model: str,
    messages: list[ChatCompletionMessageParam],
    max_tokens: int,
    sampling: Sampling = GREEDY,
) -> tuple[Sample, str]:
    """One streamed request: its sample and its text."""
    started = time.perf_counter()
    stream = await client.chat.completions.create(
        model=model,
        messages=messages,
        max_tokens=max_tokens,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        frequency_penalty=sampling.frequency_penalty,
        # A token's logprob comes in the chunk that carries it, even when its text is empty
        # (a special token, or bytes of an unfinished character: random weights make many),
        # so TTFT and ITL time every token, not only the ones with visible text.
        logprobs=True,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    arrivals: list[float] = []
    streamed = 0
    text: list[str] = []
    usage = None
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text.append(choice.delta.content or "")
            tokens = len(choice.logprobs.content or []) if choice.logprobs else 0
            if tokens:
                arrivals.append(time.perf_counter())
                streamed += tokens
    ended = time.perf_counter()
    if usage is None or not arrivals:
        raise RuntimeError(f"stream ended without {'usage' if arrivals else 'any token'}")
    if streamed != usage.completion_tokens:
        raise RuntimeError(f"{streamed} tokens streamed, usage says {usage.completion_tokens}")
    details = usage.prompt_tokens_details
    sample = Sample(
        ttft_s=arrivals[0] - started,
        itl_s=(arrivals[-1] - arrivals[0]) / (streamed - 1) if streamed > 1 else None,
        e2e_s=ended - started,
        prompt_tokens=usage.prompt_tokens,
        cached_tokens=(details.cached_tokens or 0) if details else 0,
        completion_tokens=usage.completion_tokens,
    )
    return sample, "".join(text)


async def run_cell(
    client: openai.AsyncOpenAI,
    model: str,
    contents: list[Content],
    concurrency: int,
    max_tokens: int,
) -> tuple[list[Sample], float]:
    """Every request, at most ``concurrency`` in flight; the samples and the wall time."""
    gate = asyncio.Semaphore(concurrency)

    async def limited(content: Content) -> Sample:
        async with gate:
            sample, _ = await one_request(client, model, first_turn(content), max_tokens)
            return sample

    started = time.perf_counter()
    samples = await asyncio.gather(*(limited(content) for content in contents))
    return list(samples), time.perf_counter() - started


def summarize(mix: str, concurrency: int, samples: list[Sample], seconds: float) -> dict[str, Any]:
    ttft = [s.ttft_s for s in samples]
    itl = [s.itl_s for s in samples if s.itl_s is not None]
    prompt = sum(s.prompt_tokens for s in samples)
    return {
        "mix": mix,
        "concurrency": concurrency,
        "requests": len(samples),
        "seconds": seconds,
        "requests_per_s": len(samples) / seconds,
        "output_tokens_per_s": sum(s.completion_tokens for s in samples) / seconds,
        "ttft_p50_s": percentile(ttft, 0.5),
        "ttft_p90_s": percentile(ttft, 0.9),
        "itl_p50_s": percentile(itl, 0.5) if itl else None,
        "e2e_p50_s": percentile([s.e2e_s for s in samples], 0.5),
        "prompt_tokens_mean": prompt / len(samples),
        "cached_fraction": sum(s.cached_tokens for s in samples) / prompt,
        "totals": {key: sum(getattr(s, key) for s in samples) for key in COUNTERS},
        "samples": [dataclasses.asdict(s) for s in samples],
    }


def scrape(url: str) -> dict[str, float]:
    """The gateway's counters that the bench cross-checks, chat requests answered 200 included."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    values = {name: 0.0 for name in [*COUNTERS.values(), "chat_requests_ok"]}
    ok_chat = {"route": CHAT_ROUTE, "status": "200"}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in values:
                values[sample.name] += sample.value
            if sample.name == "autoglm_http_requests_total" and sample.labels == ok_chat:
                values["chat_requests_ok"] += sample.value
    return values


def cross_check(
    before: dict[str, float], after: dict[str, float], cells: list[dict[str, Any]]
) -> dict[str, Any]:
    """The server's counter deltas beside the client's sums over every measured request."""
    client = {key: sum(c["totals"][key] for c in cells) for key in COUNTERS}
    client["requests"] = sum(c["requests"] for c in cells)
    server = {key: after[name] - before[name] for key, name in COUNTERS.items()}
    server["requests"] = after["chat_requests_ok"] - before["chat_requests_ok"]
    return {"client": client, "server": server, "agree": client == server}


@contextmanager
def running_stack(
    bundle: Path,
    device: str,
    log: Path,
    console: Console,
    settings: Mapping[str, str] | None = None,
) -> Iterator[str]:
    """`autoglm up` on free ports until the block ends, then SIGTERM (and nothing left behind);
    ``settings``: AUTOGLM_* variables for the services."""
    with launched_stack(bundle, device, log, console, settings) as stack:
        yield stack.url


@contextmanager
def launched_stack(
    bundle: Path,
    device: str,
    log: Path,
    console: Console,
    settings: Mapping[str, str] | None = None,
) -> Iterator[LaunchedStack]:
    """running_stack's stack itself (its services' pids: ``stack.up.children()``)."""
    stack = LaunchedStack(bundle, device, log, settings)
    try:
        probe = Probe()
        stack.check_ready(probe)
        if probe.problems:
            raise RuntimeError(f"the stack is not serving: {probe.problems}\n{stack.up.log_tail()}")
        console.print(f"stack ready at {stack.url} after {probe.figures['ready_s']:.1f} s")
        yield stack
    finally:
        stack.up.process.send_signal(signal.SIGTERM)
        try:
            stack.up.wait(STOP_TIMEOUT_S)
        except TimeoutError:
            console.print(f"up still running {STOP_TIMEOUT_S:.0f} s after SIGTERM; killing it")
        stack.up.kill_everything()


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


Measure = Callable[
    [LaunchedStack, str, argparse.Namespace, Console],
    Coroutine[Any, Any, tuple[list[dict[str, Any]], dict[str, Any]]],
]


def serve_and_measure(
    args: argparse.Namespace, preset: str, log: Path, console: Console, measure: Measure
) -> tuple[str, list[dict[str, Any]], dict[str, Any]]:
    """--bundle (or the preset, built) served on --device while ``measure`` runs against it:
    the served model's name, the measured cells and the /metrics cross-check."""
    with prepared_bundle(args.bundle, console, preset=preset) as bundle:
        model = Bundle.load(bundle).served_model_name
        with launched_stack(bundle, args.device, log, console) as stack:
            cells, metrics = asyncio.run(measure(stack, model, args, console))
    return model, cells, metrics


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
    model, cells, metrics = serve_and_measure(args, "default", log, console, measure)
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
