"""The phone-agent mix of bench/serve.py: Open-AutoGLM's PhoneAgent conversation, turn by turn.

Each client runs one task as PhoneAgent does (phone_agent/agent.py, v0.1.1): the system prompt
(bench/phone_agent_prompt.txt: its English prompt, `--lang en`, verbatim; the Chinese default is
~2.5k GLM tokens, but 7k with this repo's English BPE), then per turn a user message with a NEW
1080x2400 screenshot (3,354 image tokens at GLM-4.1V's pixel bounds) and the screen info, the
request as ModelClient sends it (streaming, temperature 0, top_p 0.85, frequency_penalty 0.2),
then the screenshot removed from that user message (MessageBuilder.remove_images_from_message)
and the assistant's text appended. So turn N re-sends the system prompt and the text of turns
1..N-1: with the prefix cache, only the last turn's text and the new screenshot are prefilled,
and turn N's time to first token should stay near turn 1's (issue 12: turn 10 <= 1.5x turn 1).
Reported per concurrency (clients in flight, each its own conversation) and turn: TTFT p50
over the clients, prompt and cached tokens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

import openai
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionUserMessageParam
from rich.console import Console

from bench.report import results_table, write_report
from bench.serve import (
    REQUEST_TIMEOUT_S,
    SYSTEM_PROMPT,
    Sample,
    Sampling,
    cross_check,
    one_request,
    percentile,
    scrape,
    serve_and_measure,
)
from testkit.media import b64, image_bytes

SCREEN = (1080, 2400)  # a phone screenshot, width x height
WARM_UP_SCREEN = (280, 280)  # lazy start-up costs paid without a full screenshot's minute
APPS = ("WeChat", "Meituan", "Taobao", "Amap", "Settings", "Chrome", "Xiaohongshu", "Bilibili")
TASKS = (
    "Open Meituan and search for hot pot restaurants nearby.",
    "Send 'I will be late' to Li Wei on WeChat.",
    "Find a phone case under 50 yuan on Taobao and add it to the cart.",
    "Navigate to Hangzhou East station in Amap.",
    "Turn on dark mode in Settings.",
    "Search Chrome for tomorrow's weather in Beijing.",
    "Save the top post about coffee shops on Xiaohongshu.",
    "Play the latest video of a followed channel on Bilibili.",
)
# PhoneAgent's sampling (phone_agent.model.ModelConfig defaults); max_tokens is the bench's.
SAMPLING = Sampling(temperature=0.0, top_p=0.85, frequency_penalty=0.2)
Messages = list[ChatCompletionMessageParam]


def screenshot_url(client: int, turn: int) -> str:
    """A different screen for every client and turn (its own shapes and colours)."""
    return f"data:image/png;base64,{b64(image_bytes('PNG', SCREEN, seed=client * 1000 + turn))}"


def user_message(
    task: str, client: int, turn: int, screenshot: str
) -> ChatCompletionUserMessageParam:
    """PhoneAgent's user message: the screenshot first, then the task (first turn) or the
    screen-info header, with the screen info as JSON (MessageBuilder.build_screen_info)."""
    info = json.dumps({"current_app": APPS[(client + turn) % len(APPS)]}, ensure_ascii=False)
    text = f"{task}\n\n{info}" if turn == 0 else f"** Screen Info **\n\n{info}"
    return {
        "role": "user",
        "content": [
            {"type": "image_url", "image_url": {"url": screenshot}},
            {"type": "text", "text": text},
        ],
    }


def without_images(message: ChatCompletionUserMessageParam) -> ChatCompletionUserMessageParam:
    """MessageBuilder.remove_images_from_message: only the text parts stay."""
    content = message["content"]
    if isinstance(content, str):
        return message
    return {"role": "user", "content": [p for p in content if p["type"] == "text"]}


async def conversation(
    client: openai.AsyncOpenAI,
    model: str,
    system_prompt: str,
    index: int,
    screenshots: list[str],
    max_tokens: int,
) -> list[Sample]:
    """One task, a turn per screenshot; the samples in turn order."""
    task = TASKS[index % len(TASKS)]
    messages: Messages = [{"role": "system", "content": system_prompt}]
    samples: list[Sample] = []
    for turn, screenshot in enumerate(screenshots):
        user = user_message(task, index, turn, screenshot)
        messages.append(user)
        sample, text = await one_request(client, model, messages, max_tokens, SAMPLING)
        samples.append(sample)
        messages[-1] = without_images(user)
        messages.append({"role": "assistant", "content": text})
    return samples


def summarize_turns(concurrency: int, runs: list[list[Sample]]) -> dict[str, Any]:
    """Per turn, over the clients: TTFT p50 and max, prompt and cached tokens (means)."""
    turns = []
    for turn, samples in enumerate(zip(*runs, strict=True), start=1):
        ttft = [s.ttft_s for s in samples]
        turns.append({
            "turn": turn,
            "ttft_p50_s": percentile(ttft, 0.5),
            "ttft_max_s": max(ttft),
            "prompt_tokens_mean": sum(s.prompt_tokens for s in samples) / len(samples),
            "cached_tokens_mean": sum(s.cached_tokens for s in samples) / len(samples),
        })  # fmt: skip
    flat = [s for run in runs for s in run]
    return {
        "mix": "phone",
        "concurrency": concurrency,
        "requests": len(flat),
        "turns": turns,
        "last_vs_first_ttft": turns[-1]["ttft_p50_s"] / turns[0]["ttft_p50_s"],
        "totals": {
            key: sum(getattr(s, key) for s in flat)
            for key in ("prompt_tokens", "cached_tokens", "completion_tokens")
        },
    }


async def measure_phone(
    url: str, model: str, args: argparse.Namespace, console: Console
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """A cell per --concurrency: that many clients, each a --turns-turn conversation; and the
    gateway's counters against the client's sums."""
    async with openai.AsyncOpenAI(
        base_url=f"{url}/v1", api_key="EMPTY", max_retries=0, timeout=REQUEST_TIMEOUT_S
    ) as client:
        warm_up = f"data:image/png;base64,{b64(image_bytes('PNG', WARM_UP_SCREEN, seed=999))}"
        await conversation(client, model, SYSTEM_PROMPT, -1, [warm_up], 2)
        before = scrape(url)
        cells = []
        first_client = 0  # every client of the run gets its own screens
        for concurrency in args.concurrency:
            ids = range(first_client, first_client + concurrency)
            first_client += concurrency
            # The screens are PNG-encoded before the clock starts.
            screens = {i: [screenshot_url(i, t) for t in range(args.turns)] for i in ids}
            runs = await asyncio.gather(*(
                conversation(client, model, SYSTEM_PROMPT, i, screens[i], args.max_tokens)
                for i in ids
            ))  # fmt: skip
            cell = summarize_turns(concurrency, list(runs))
            cells.append(cell)
            first, last = cell["turns"][0], cell["turns"][-1]
            console.print(
                f"phone at concurrency {concurrency}: TTFT p50 turn 1 "
                f"{first['ttft_p50_s']:.1f} s, turn {last['turn']} {last['ttft_p50_s']:.1f} s "
                f"({cell['last_vs_first_ttft']:.2f}x)"
            )
        return cells, cross_check(before, scrape(url), cells)


def print_turns(report: dict[str, Any], console: Console) -> None:
    columns = ("conc", "turn", "TTFT p50 s", "TTFT max s", "prompt", "cached")
    title = (
        f"serve, phone-agent mix: {report['turns']} turns, a new 1080x2400 screenshot per turn, "
        f"earlier ones dropped, {report['max_tokens']} tokens per answer, on {report['device']}; "
        "TTFT p50 over the clients"
    )
    table = results_table(title, columns)
    for cell in report["cells"]:
        for t in cell["turns"]:
            table.add_row(
                str(cell["concurrency"]), str(t["turn"]), f"{t['ttft_p50_s']:.2f}",
                f"{t['ttft_max_s']:.2f}", f"{t['prompt_tokens_mean']:.0f}",
                f"{t['cached_tokens_mean']:.0f}",
            )  # fmt: skip
    console.print(table)
    for cell in report["cells"]:
        console.print(
            f"concurrency {cell['concurrency']}: last turn / turn 1 TTFT "
            f"{cell['last_vs_first_ttft']:.2f}x (issue 12 target <= 1.5x)"
        )


def run_phone_mix(args: argparse.Namespace, console: Console) -> int:
    """The phone-agent mix on the phone preset (built unless --bundle), served as `make up`
    serves an imported bundle: unquantized unless it holds a GPTQ checkpoint."""
    output = args.output.with_name(f"{args.output.stem}-phone.json")
    log = output.with_name(f"{output.stem}-up.log")
    model, cells, metrics = serve_and_measure(args, "phone", log, console, measure_phone)
    report: dict[str, Any] = {
        "bench": "serve-phone",
        "bundle": str(args.bundle or "phone preset (built, unquantized as `make up` serves it)"),
        "model": model, "device": args.device, "max_tokens": args.max_tokens,
        "turns": args.turns, "concurrency": args.concurrency, "cells": cells, "metrics": metrics,
    }  # fmt: skip
    print_turns(report, console)
    return write_report(output, report, console, ok=metrics["agree"])
