"""PhoneAgent's conversation through the whole stack, turn by turn (issue 12, point 5).

Each client runs one task as Open-AutoGLM's PhoneAgent does (bench/phone_conversation.py): a new
1080x2400 screenshot per turn, earlier ones dropped from the history, the whole history re-sent,
PhoneAgent's 1 s wait after each action. Turn N's prompt equals turn N-1's up to where turn
N-1's screenshot was, so with the prefix cache only the last turn's text and the new screenshot
are prefilled, and turn N's TTFT stays near turn 1's (target: turn 10 <= 1.5x turn 1 at
concurrency 8). Per concurrency and turn: TTFT p50 over the clients, prompt tokens, the tokens
the cache can serve (``Reuse``, from the gateway's /tokenize) and those it served
(usage.prompt_tokens_details.cached_tokens). The decoder's KV cache is sized for the load
(``cache_tokens``: the default 16,384 tokens hold three full screenshots' turns, not 8
histories). Then ``--baseline`` rounds (bench/phone_baseline.py): an image request through the
services, the same one run by the same parts in this process (target: at most 1.25x), and
one through the services called hop by hop, in wall and CPU time, median and spread.

Sizing: the phone preset's tower takes ~30 s per 1080x2400 screenshot here and its decoder ~0.3
GFLOP per prompt token, so the full run (1 and 8 clients x 10 turns) takes about an hour on 2
cores. ``--quick`` keeps 8 clients x 10 turns and bounds the images' area on the server
(``QUICK_MAX_PIXELS``, vLLM's mm_processor_kwargs: the clients still send 1080x2400 PNGs, 189
tokens each after the resize) with 16-token answers: ~10 minutes. Smaller images make the
re-sent history a larger part of each prompt, the harder test of the cache. ``--turns 0``
runs only the baseline.

    python -m bench.phone_agent [--quick] [--turns 10] [--concurrency 1 8] [--max-tokens 32]
                                [--max-pixels 0] [--baseline 3]
                                [--bundle PATH] [--device cpu] [--output PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
from pathlib import Path
from typing import Any

import httpx
import openai
from rich.console import Console

from bench.bundles import prepared_bundle
from bench.chat_requests import SYSTEM_PROMPT
from bench.chat_stream import REQUEST_TIMEOUT_S, Sample, one_request, percentile
from bench.device_check.stack import LaunchedStack
from bench.phone_baseline import compare, summarize_baseline
from bench.phone_conversation import (
    SAMPLING,
    SCREEN,
    TASKS,
    WARM_UP_SCREEN,
    Messages,
    Reuse,
    first_turn_messages,
    screenshot_url,
    user_message,
    without_images,
)
from bench.phone_inprocess import InProcess
from bench.phone_report import print_report
from bench.report import BenchParser, write_report
from bench.serve_metrics import cross_check, scrape
from bench.served_stack import launched_stack
from bundle.layout import Bundle
from gateway.config import GatewayConfig
from gateway.positions import image_layout
from services.decoder.config import DecoderConfig

# --quick: the image processor's area bound (it counts a still image's 2 frames): 1080x2400
# becomes 252x588, 189 tokens instead of 3,354.
QUICK_MAX_PIXELS = 2 * 160_000
ACTION_DELAY_S = 1.0  # PhoneAgent waits after each action (TimingConfig: default_tap_delay)
WARM_UP_CLIENT = 20_000


@dataclasses.dataclass(frozen=True)
class Turn:
    """One turn as the client saw it, and the prompt tokens the prefix cache could have served:
    the prompt's common prefix with the one before it (the client's previous turn, else the
    warm-up's), in whole cache blocks, short of the last token (the decoder computes it)."""

    sample: Sample
    reusable_tokens: int


@dataclasses.dataclass(frozen=True)
class Session:
    """What every client of a run shares: the stack's two clients, the model, the bundle's
    reuse rule."""

    client: openai.AsyncOpenAI
    http: httpx.AsyncClient  # the gateway's own routes (/tokenize)
    model: str
    reuse: Reuse

    async def prompt_ids(self, messages: Messages) -> list[int]:
        """The prompt a chat request with these messages gets (the gateway's /tokenize)."""
        body = {"model": self.model, "messages": messages}
        response = await self.http.post("/tokenize", json=body)
        response.raise_for_status()
        ids: list[int] = response.json()["tokens"]
        return ids


async def conversation(
    session: Session, index: int, screenshots: list[str], max_tokens: int, before: list[int]
) -> list[Turn]:
    """One task, a turn per screenshot, as PhoneAgent runs it; ``before``: a prompt the cache
    held before the first turn."""
    task = TASKS[index % len(TASKS)]
    messages: Messages = [{"role": "system", "content": SYSTEM_PROMPT}]
    turns: list[Turn] = []
    for turn, screenshot in enumerate(screenshots):
        user = user_message(task, index, turn, screenshot)
        messages.append(user)
        ids = await session.prompt_ids(messages)
        sample, text = await one_request(
            session.client, session.model, messages, max_tokens, SAMPLING
        )
        turns.append(Turn(sample, session.reuse.tokens(ids, before)))
        before = ids
        messages[-1] = without_images(user)
        messages.append({"role": "assistant", "content": text})
        if turn + 1 < len(screenshots):
            await asyncio.sleep(ACTION_DELAY_S)
    return turns


def summarize_turns(concurrency: int, runs: list[list[Turn]]) -> dict[str, Any]:
    """Per turn, over the clients: TTFT p50 and max; prompt, reusable and cached tokens
    (means)."""
    turns = []
    for number, column in enumerate(zip(*runs, strict=True), start=1):
        samples = [t.sample for t in column]
        ttft = [s.ttft_s for s in samples]
        turns.append({
            "turn": number,
            "ttft_p50_s": percentile(ttft, 0.5),
            "ttft_max_s": max(ttft),
            "prompt_tokens_mean": statistics.mean(s.prompt_tokens for s in samples),
            "reusable_tokens_mean": statistics.mean(t.reusable_tokens for t in column),
            "cached_tokens_mean": statistics.mean(s.cached_tokens for s in samples),
        })  # fmt: skip
    flat = [t.sample for run in runs for t in run]
    reusable_total = sum(t.reusable_tokens for run in runs for t in run)
    return {
        "concurrency": concurrency,
        "requests": len(flat),
        "turns": turns,
        "last_vs_first_ttft": turns[-1]["ttft_p50_s"] / turns[0]["ttft_p50_s"],
        # of the prompt tokens the cache could serve, those it served
        "cache_hit_fraction": sum(s.cached_tokens for s in flat) / max(reusable_total, 1),
        "totals": {
            key: sum(getattr(s, key) for s in flat)
            for key in ("prompt_tokens", "cached_tokens", "completion_tokens")
        },
    }


def image_tokens(bundle: Path, max_pixels: int) -> int:
    """A SCREEN-sized screenshot's tokens with the bundle's image processor."""
    layout = image_layout(Bundle.load(bundle), GatewayConfig(vision_max_pixels=max_pixels))
    if layout is None:
        raise ValueError(f"{bundle} is not a GLM-4.1V bundle")
    width, height = SCREEN
    return layout.tokens(layout.grid_of(height, width))


def cache_tokens(args: argparse.Namespace, image_tokens: int) -> int:
    """The decoder's KV cache for this load: every client's longest prompt and answer, twice
    (a client's new turn is written while its previous turn's blocks wait to be evicted), and
    at least the decoder's default. Each turn adds about an answer and 64 tokens of text."""
    system = 800  # the English system prompt's tokens, rounded up
    longest = system + image_tokens + args.turns * (args.max_tokens + 64)
    return max(DecoderConfig().max_total_tokens, 2 * max(args.concurrency) * longest)


async def measure(
    stack: LaunchedStack,
    args: argparse.Namespace,
    bundle: Path,
    local: InProcess | None,
    console: Console,
) -> dict[str, Any]:
    """The turns at each --concurrency, then the baseline rounds; the gateway's counters
    against the client's sums over the turns."""
    model = Bundle.load(bundle).served_model_name
    url = stack.url
    async with (
        openai.AsyncOpenAI(
            base_url=f"{url}/v1", api_key="EMPTY", max_retries=0, timeout=REQUEST_TIMEOUT_S
        ) as client,
        httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT_S) as http,
    ):
        session = Session(client, http, model, Reuse.for_bundle(bundle))
        screen = screenshot_url(WARM_UP_CLIENT, 0, WARM_UP_SCREEN)
        warm_up = first_turn_messages(WARM_UP_CLIENT, screen)
        await conversation(session, WARM_UP_CLIENT, [screen], 2, [])
        before = await session.prompt_ids(warm_up)
        if local is not None:
            await asyncio.to_thread(local.first_token, model, warm_up, 2)
        counters = scrape(url)
        cells = []
        first_client = 0  # every client of the run gets its own screens
        for concurrency in args.concurrency if args.turns else ():
            ids = range(first_client, first_client + concurrency)
            first_client += concurrency
            # The screens are PNG-encoded before the clock starts.
            screens = {i: [screenshot_url(i, t) for t in range(args.turns)] for i in ids}
            runs = await asyncio.gather(*(
                conversation(session, i, screens[i], args.max_tokens, before) for i in ids
            ))  # fmt: skip
            cells.append(summarize_turns(concurrency, list(runs)))
            console.print(f"concurrency {concurrency}: {cells[-1]['last_vs_first_ttft']:.2f}x")
        metrics = cross_check(counters, scrape(url), cells)
        baseline = summarize_baseline([])
        if local is not None:
            baseline = await compare(stack, client, model, local, args.baseline)
        return {"cells": cells, "metrics": metrics, "baseline": baseline}


def run(args: argparse.Namespace, console: Console) -> int:
    """On the phone preset (built unless --bundle), served as `make up` serves an imported
    bundle: unquantized unless it holds a GPTQ checkpoint."""
    log = args.output.with_name(f"{args.output.stem}-up.log")
    with prepared_bundle(args.bundle, console, preset="phone") as bundle:
        kv = cache_tokens(args, image_tokens(bundle, args.max_pixels))
        settings = {"AUTOGLM_DECODER_MAX_TOTAL_TOKENS": str(kv)}
        if args.max_pixels:
            settings["AUTOGLM_VISION_MAX_PIXELS"] = str(args.max_pixels)
        local = None
        if args.baseline:
            console.print("loading the in-process baseline's parts")
            local = InProcess(bundle, args.device, args.max_pixels, kv)
        with launched_stack(bundle, args.device, log, console, settings) as stack:
            measured = asyncio.run(measure(stack, args, bundle, local, console))
        model = Bundle.load(bundle).served_model_name
    report: dict[str, Any] = {
        "bench": "serve-phone",
        "bundle": str(args.bundle or "phone preset (built, unquantized as `make up` serves it)"),
        "model": model, "device": args.device, "max_tokens": args.max_tokens,
        "turns": args.turns, "concurrency": args.concurrency, "max_pixels": args.max_pixels,
        "stack_settings": settings, **measured,
    }  # fmt: skip
    print_report(report, console)
    return write_report(args.output, report, console, ok=measured["metrics"]["agree"])


def main(argv: list[str] | None = None) -> int:
    parser = BenchParser(
        "serve-phone",
        __doc__,
        quick={
            "concurrency": [8],
            "turns": 10,
            "max_tokens": 16,
            "max_pixels": QUICK_MAX_PIXELS,
            "baseline": 9,
        },
        bundle_help="a GLM-4.1V bundle (default: build the phone preset)",
        device_help="every service's device (cpu, cuda:N)",
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--turns", type=int, default=10, help="turns per client")
    parser.add_argument("--max-tokens", type=int, default=32, help="tokens per answer")
    parser.add_argument(
        "--max-pixels", type=int, default=0,
        help="the image processor's area bound on the server (0: the checkpoint's)",
    )  # fmt: skip
    parser.add_argument(
        "--baseline", type=int, default=3,
        help="rounds of an image request through the gateway, hop by hop over gRPC and in "
        "process (bench/phone_baseline.py; 0: none)",
    )  # fmt: skip
    args = parser.parse(argv)
    if args.turns < 0 or args.max_tokens < 1 or min(args.concurrency) < 1:
        parser.error("--max-tokens and --concurrency must be at least 1, --turns at least 0")
    return run(args, Console())


if __name__ == "__main__":
    raise SystemExit(main())
