"""Soak: the real stack (`autoglm up`) under mixed load for a long time; does memory stay flat?

``--concurrency`` clients stream chat completions through the openai SDK for ``--minutes``:
text only, text + an image, text + an audio clip in turn, every image and clip new (the gateway's
embedding cache is off, so the encoders work on every request), and every
``--disconnect-every``-th client leaves after its first chunks (the gateway then cancels its
work). Every ``--sample-s`` seconds the resident memory (VmRSS) of each service process is read
from /proc. After ``--warm-up-minutes`` (allocators, caches and torch's pools fill up), each
service's RSS is fitted with a straight line: its slope, in MB per minute, is what a leak looks
like. The run fails when a slope exceeds ``--max-slope``.

    python -m bench.soak [--quick] [--minutes 30] [--concurrency 4] [--bundle PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import openai
from openai.types.chat import ChatCompletionContentPartParam
from rich import box
from rich.console import Console
from rich.table import Table

from bench.bundles import prepared_bundle
from bench.report import BenchParser, write_report
from testkit.media import audio_bytes, b64, data_url, image_bytes
from testkit.processes import Up

MODEL = "autoglm-phone-9b"
MIXES = ("text", "image", "audio")
READY_TIMEOUT_S = 600.0
MB = 1024 * 1024
# Every request's media is new: with the cache on, repeats would skip the encoders entirely.
SETTINGS = {"AUTOGLM_GATEWAY_EMBEDDING_CACHE_MB": "0"}


@dataclasses.dataclass
class Counts:
    completed: int = 0
    disconnected: int = 0
    failed: int = 0
    tokens: int = 0
    errors: dict[str, int] = dataclasses.field(default_factory=dict)


def rss_mb(pid: int) -> float | None:
    """A process's resident memory from /proc, or None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024  # kB
    return None


def content(mix: str, n: int) -> list[ChatCompletionContentPartParam]:
    parts: list[ChatCompletionContentPartParam] = [
        {"type": "text", "text": f"Request {n}: describe this."}
    ]
    if mix == "image":
        url = data_url(image_bytes(seed=n, size=(96 + n % 64, 80)), "image/png")
        parts.append({"type": "image_url", "image_url": {"url": url}})
    elif mix == "audio":
        clip = audio_bytes(1.0 + (n % 5) / 10, seed=n % 20)
        parts.append({"type": "input_audio", "input_audio": {"data": b64(clip), "format": "wav"}})
    return parts


async def client_loop(
    client: openai.AsyncOpenAI,
    numbers: itertools.count[int],
    args: argparse.Namespace,
    until: float,
    counts: Counts,
) -> None:
    while time.monotonic() < until:
        n = next(numbers)
        leave = args.disconnect_every and n % args.disconnect_every == 0
        try:
            stream = await client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": content(MIXES[n % 3], n)}],
                max_tokens=args.max_tokens,
                stream=True,
                extra_body={"ignore_eos": True},
            )
            chunks = 0
            async for chunk in stream:
                chunks += 1
                if chunk.choices and chunk.choices[0].delta.content:
                    counts.tokens += 1
                if leave and chunks == 3:
                    await stream.close()  # the client goes away mid-stream
                    break
        except openai.APIError as exc:
            counts.failed += 1
            # error bodies carry fixed messages per kind, so a few keys name every failure
            kind = f"{MIXES[n % 3]}: {type(exc).__name__}: {exc.message}"[:200]
            counts.errors[kind] = counts.errors.get(kind, 0) + 1
            await asyncio.sleep(0.5)
            continue
        if leave:
            counts.disconnected += 1
        else:
            counts.completed += 1


Samples = dict[str, list[tuple[float, float]]]  # per service: (minute, RSS in MB)


async def sample(pids: dict[str, int], every_s: float, until: float, samples: Samples) -> None:
    started = time.monotonic()
    while time.monotonic() < until:
        now = (time.monotonic() - started) / 60
        for name, pid in pids.items():
            mb = rss_mb(pid)
            if mb is not None:
                samples[name].append((now, mb))
        await asyncio.sleep(every_s)


async def load(url: str, pids: dict[str, int], args: argparse.Namespace) -> dict[str, Any]:
    until = time.monotonic() + args.minutes * 60
    counts = Counts()
    samples: Samples = {name: [] for name in pids}
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="EMPTY", max_retries=0, timeout=300)
    numbers = itertools.count()
    async with asyncio.TaskGroup() as group:
        group.create_task(sample(pids, args.sample_s, until, samples))
        for _ in range(args.concurrency):
            group.create_task(client_loop(client, numbers, args, until, counts))
    await client.close()
    return {"counts": dataclasses.asdict(counts), "samples": samples}


def slopes(samples: Samples, warm_up_minutes: float) -> dict[str, dict[str, float]]:
    """Per service, after the warm-up: RSS at its start and end, the peak, the fitted slope."""
    fitted: dict[str, dict[str, float]] = {}
    for name, points in samples.items():
        steady = [(t, mb) for t, mb in points if t >= warm_up_minutes]
        if len(steady) < 3:
            continue
        times, mbs = zip(*steady, strict=True)
        fit = statistics.linear_regression(times, mbs)
        fitted[name] = {
            "rss_after_warm_up_mb": mbs[0],
            "rss_end_mb": mbs[-1],
            "rss_peak_mb": max(mb for _, mb in points),
            "slope_mb_per_min": fit.slope,
            "samples": len(steady),
        }
    return fitted


def main(argv: list[str] | None = None) -> int:
    parser = BenchParser(
        "soak", __doc__ or "", quick={"minutes": 2.0, "warm_up_minutes": 0.5, "sample_s": 2.0}
    )
    parser.add_argument("--minutes", type=float, default=30.0, help="how long the load runs")
    parser.add_argument("--warm-up-minutes", type=float, default=5.0, help="left out of the fit")
    parser.add_argument("--concurrency", type=int, default=4, help="clients at once")
    parser.add_argument("--max-tokens", type=int, default=32, help="tokens per completion")
    parser.add_argument("--disconnect-every", type=int, default=5, help="0: nobody leaves")
    parser.add_argument("--sample-s", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--max-slope", type=float, default=1.0, help="MB/min counted as flat")
    args = parser.parse(argv)
    if args.warm_up_minutes >= args.minutes:
        parser.error("--warm-up-minutes must be shorter than --minutes")
    console = Console()
    with prepared_bundle(args.bundle, console) as bundle:
        log_path = Path(tempfile.mkdtemp(prefix="autoglm-soak-")) / "up.log"
        up = Up(bundle, log_path, args.device, ["--startup-timeout-s", str(READY_TIMEOUT_S)],
                settings=SETTINGS)  # fmt: skip
        try:
            url = up.wait_for_url(READY_TIMEOUT_S)
            pids = up.children()
            console.print(f"soaking {url} for {args.minutes:g} min; services {pids}")
            result = asyncio.run(load(url, pids, args))
        finally:
            up.process.terminate()
            try:
                up.wait(60)
            except TimeoutError:
                up.kill_everything()
    fitted = slopes(result["samples"], args.warm_up_minutes)
    table = Table(
        title=f"RSS after {args.warm_up_minutes:g} of {args.minutes:g} min", box=box.SIMPLE
    )
    for column in ("service", "after warm-up MB", "end MB", "peak MB", "slope MB/min"):
        table.add_column(column, justify="left" if column == "service" else "right")
    for name, fit in fitted.items():
        table.add_row(
            name, f"{fit['rss_after_warm_up_mb']:.0f}", f"{fit['rss_end_mb']:.0f}",
            f"{fit['rss_peak_mb']:.0f}", f"{fit['slope_mb_per_min']:+.2f}",
        )  # fmt: skip
    console.print(table)
    console.print(f"requests: {result['counts']}")
    flat = bool(fitted) and all(f["slope_mb_per_min"] <= args.max_slope for f in fitted.values())
    settings = {k: v for k, v in vars(args).items() if k not in ("bundle", "output")}
    report = {"settings": settings, "slopes": fitted, **result}
    return write_report(args.output, report, console, ok=flat and result["counts"]["completed"] > 0)


if __name__ == "__main__":
    raise SystemExit(main())
