"""Issue 12 point 5 (b): an image request's TTFT through the services against the same work in
one process (at most 1.25x), measured so that the machine's noise shows.

Each round runs three legs back to back, in an order that rotates from round to round: the
request through the gateway (``services``: TTFT as the client sees it, and the CPU time of the
stack's processes), the same request in this process (``in_process``: bench/phone_inprocess.py,
per stage, wall and CPU), and a request with another screenshot of the same size through the
services called one by one over gRPC (``rpc``: bench/phone_rpc.py, per hop; its own screenshot
so the decoder's prefix cache cannot serve the image the services leg sent). The figures are
the median and spread of each round's ratio, so a slow spell on a shared machine moves a round,
not the verdict; the stages say where the services' extra time goes. Every leg asks for one
token: the services' CPU time then holds no decode step that the in-process leg, stopped at
its first token, does not pay.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import openai

from bench.chat_stream import Sampling, one_request, percentile
from bench.cpu import cpu_seconds
from bench.device_check.stack import LaunchedStack
from bench.phone_conversation import SAMPLING, Messages, first_turn_messages, screenshot_url
from bench.phone_inprocess import InProcess
from bench.phone_rpc import ServicesByRpc, wire_costs

LEGS = ("services", "in_process", "rpc")
BASELINE_CLIENT = 10_000  # the baseline's screens and tasks differ from every turn's
IDLE_S = 3.0  # how long the stack's idle CPU is measured before the rounds


async def stack_idle_cpu(pids: Mapping[str, int]) -> float:
    """The stack's CPU seconds per second when nobody calls it (health checks, keepalives)."""
    before = sum(cpu_seconds(pids).values())
    await asyncio.sleep(IDLE_S)
    return (sum(cpu_seconds(pids).values()) - before) / IDLE_S


async def baseline_round(
    client: openai.AsyncOpenAI,
    model: str,
    local: InProcess,
    rpc: ServicesByRpc,
    pids: Mapping[str, int],
    messages: tuple[list[Any], list[Any]],
    sampling: Sampling,
    order: tuple[str, ...],
) -> dict[str, Any]:
    """One round: ``messages[0]`` through the gateway and in process, ``messages[1]`` (the
    same request with another screenshot) hop by hop, in ``order``."""

    def stack_cpu() -> Callable[[], dict[str, float]]:
        before = cpu_seconds(pids)
        return lambda: {k: v - before[k] for k, v in cpu_seconds(pids).items()}

    async def services() -> dict[str, Any]:
        spent = stack_cpu()
        sample, _ = await one_request(client, model, messages[0], 1, sampling)
        by_process = spent()
        return {"ttft_s": sample.ttft_s, "cpu_s": sum(by_process.values()),
                "cpu_by_process_s": by_process}  # fmt: skip

    async def in_process() -> dict[str, Any]:
        stages = await asyncio.to_thread(local.first_token, model, messages[0], 1)
        return stages.to_json()

    async def by_rpc() -> dict[str, Any]:
        spent = stack_cpu()
        stages = await rpc.first_token(model, messages[1], 1)
        return {**stages.to_json(), "stack_cpu_by_process_s": spent()}

    legs = {"services": services, "in_process": in_process, "rpc": by_rpc}
    return {"order": list(order), **{leg: await legs[leg]() for leg in order}}


def rotated(k: int) -> tuple[str, ...]:
    """Round k's order of the legs: each leg goes first, second and third in turn."""
    shift = k % len(LEGS)
    return LEGS[shift:] + LEGS[:shift]


def spread(values: list[float]) -> dict[str, float]:
    """Median, quartiles and extremes."""
    return {"p50": statistics.median(values), "p25": percentile(values, 0.25),
            "p75": percentile(values, 0.75), "min": min(values), "max": max(values)}  # fmt: skip


def stage_medians(rounds: list[dict[str, Any]], leg: str, clock: str) -> dict[str, float]:
    stages = rounds[0][leg][clock]
    return {s: statistics.median(r[leg][clock][s] for r in rounds) for s in stages}


def summarize_baseline(rounds: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """Per round, services / in process in wall and CPU time: median (the verdict: at most
    1.25x) and spread; the medians of each leg's stages; the gateway's share (its TTFT less
    the hop-by-hop leg's vision, fusion, prompt and decoder hops)."""
    if not rounds:
        return {"rounds": []}
    wall = [r["services"]["ttft_s"] / r["in_process"]["ttft_s"] for r in rounds]
    cpu = [r["services"]["cpu_s"] / r["in_process"]["cpu_s"] for r in rounds]
    hops = ("vision_rpc", "fusion", "prompt", "decoder_rpc")
    gateway = [r["services"]["ttft_s"] - sum(r["rpc"]["wall"][h] for h in hops) for r in rounds]
    processes = rounds[0]["services"]["cpu_by_process_s"]
    return {
        "rounds": rounds,
        "services_vs_in_process": spread(wall),
        "services_vs_in_process_cpu": spread(cpu),
        "services_ttft_p50_s": statistics.median(r["services"]["ttft_s"] for r in rounds),
        "in_process_ttft_p50_s": statistics.median(r["in_process"]["ttft_s"] for r in rounds),
        "rpc_ttft_p50_s": statistics.median(r["rpc"]["ttft_s"] for r in rounds),
        "services_cpu_p50_s": statistics.median(r["services"]["cpu_s"] for r in rounds),
        "in_process_cpu_p50_s": statistics.median(r["in_process"]["cpu_s"] for r in rounds),
        "services_cpu_by_process_p50_s": {
            p: statistics.median(r["services"]["cpu_by_process_s"][p] for r in rounds)
            for p in processes
        },
        "in_process_wall_p50_s": stage_medians(rounds, "in_process", "wall"),
        "in_process_cpu_p50_s_by_stage": stage_medians(rounds, "in_process", "cpu"),
        "rpc_wall_p50_s": stage_medians(rounds, "rpc", "wall"),
        "gateway_share_p50_s": statistics.median(gateway),
        **extra,
    }


def baseline_requests(rounds: int) -> list[tuple[Messages, Messages]]:
    """Per round, a first turn (the system prompt cached) with its own screen, and the same
    turn with another screen of the same size (for the hop-by-hop leg)."""

    def first_turn(k: int, screen: int) -> Messages:
        client = BASELINE_CLIENT + k
        return first_turn_messages(client, screenshot_url(client, screen))

    return [(first_turn(k, 0), first_turn(k, 1)) for k in range(rounds)]


async def compare(
    stack: LaunchedStack, client: openai.AsyncOpenAI, model: str, local: InProcess, rounds: int
) -> dict[str, Any]:
    """Issue 12 point 5 (b): bench/phone_baseline.py's rounds on this stack."""
    pids = stack.up.children()
    targets = {name: stack.up.target(name) for name in pids if name != "gateway"}
    rpc = ServicesByRpc(targets, stack.token_file, local)
    requests = baseline_requests(rounds)  # the screens are PNG-encoded before any clock
    try:
        wire = wire_costs(local, model, requests[0][0]) if requests else {}
        idle = await stack_idle_cpu(pids)
        started = time.perf_counter()
        done = [
            await baseline_round(client, model, local, rpc, pids, pair, SAMPLING, rotated(k))
            for k, pair in enumerate(requests)
        ]
    finally:
        await rpc.close()
    seconds = time.perf_counter() - started
    return summarize_baseline(done, stack_idle_cpu_per_s=idle, rounds_s=seconds, wire=wire)
