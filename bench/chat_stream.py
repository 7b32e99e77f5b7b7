"""The serving benches' client: one streamed chat completion timed token by token through the
openai SDK, a cell of them at a bounded concurrency, and the cell's summary."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import openai
from openai.types.chat import ChatCompletionMessageParam

from bench.chat_requests import Content, first_turn
from bench.serve_metrics import COUNTERS

REQUEST_TIMEOUT_S = 600.0


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


async def one_request(
    client: openai.AsyncOpenAI,
    model: str,
    messages: list[ChatCompletionMessageParam],
    max_tokens: int,
    sampling: Sampling = GREEDY,
    every_token_streamed: bool = True,
) -> tuple[Sample, str]:
    """One streamed request: its sample and its text. ``every_token_streamed``: the server
    sends every token's logprob (ours does; llama-server sends no chunk for a token without
    text, such as the control tokens random weights often pick), so the streamed count must
    equal the usage; otherwise the usage counts the tokens and no ITL is measured."""
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
    if every_token_streamed and streamed != usage.completion_tokens:
        raise RuntimeError(f"{streamed} tokens streamed, usage says {usage.completion_tokens}")
    details = usage.prompt_tokens_details
    sample = Sample(
        ttft_s=arrivals[0] - started,
        itl_s=(
            (arrivals[-1] - arrivals[0]) / (streamed - 1)
            if streamed > 1 and every_token_streamed
            else None
        ),
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
    every_token_streamed: bool = True,
) -> tuple[list[Sample], float]:
    """Every request, at most ``concurrency`` in flight; the samples and the wall time."""
    gate = asyncio.Semaphore(concurrency)

    async def limited(content: Content) -> Sample:
        async with gate:
            messages = first_turn(content)
            sample, _ = await one_request(
                client, model, messages, max_tokens, every_token_streamed=every_token_streamed
            )
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
