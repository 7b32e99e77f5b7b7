"""Time to first token with automatic prefix caching on and off, on the bench decoder.

The phone agent's shape: every request resends the same long prefix (system prompt and history,
``--prefix`` tokens) with a short distinct suffix (``--suffix`` tokens), one request after
another. Two engines on the same weights (``build_bundle(preset="bench")`` or ``--bundle``), one
with prefix caching and one without, get the same requests alternately, so load from other
processes hits both alike. The first request of a pass finds nothing cached on either side; the
others are the ones caching serves. Each pass uses a new prefix. Greedy tokens must agree.

    python -m bench.prefix [--quick] [--prefix 1024] [--suffix 32] [--requests 8] [--repeats 2]
                           [--bundle PATH] [--device cuda:0 --dtype bfloat16] [--output PATH]
"""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from bench.report import BenchParser, write_report
from bundle.build import build_bundle
from bundle.layout import Bundle
from services.common.device import resolve_device
from services.decoder.config import DecoderConfig
from services.decoder.engine import Engine
from services.decoder.loader import DTYPES, load_decoder
from services.decoder.params import StoppingParams
from services.decoder.types import GenerateRequest

NEW_TOKENS = 8


@dataclasses.dataclass
class Side:
    """One engine and what it measured: TTFT of each pass's first request (nothing cached yet)
    and of the later ones, the later ones' cached prompt tokens, and every greedy output."""

    engine: Engine
    first_ttft_s: list[float] = dataclasses.field(default_factory=list)
    later_ttft_s: list[float] = dataclasses.field(default_factory=list)
    later_cached: list[int] = dataclasses.field(default_factory=list)
    tokens: list[list[int]] = dataclasses.field(default_factory=list)

    def run(self, request: GenerateRequest, first_of_pass: bool) -> None:
        start = time.perf_counter()
        self.engine.add(request)
        ttft: float | None = None
        tokens: list[int] = []
        cached = 0
        while self.engine.has_work():
            for out in self.engine.step():
                ttft = ttft if ttft is not None else time.perf_counter() - start
                tokens += out.token_ids
                cached = out.cached_tokens
        assert ttft is not None
        self.tokens.append(tokens)
        if first_of_pass:
            self.first_ttft_s.append(ttft)
        else:
            self.later_ttft_s.append(ttft)
            self.later_cached.append(cached)

    def summary(self) -> dict[str, Any]:
        later = sorted(self.later_ttft_s)
        return {
            "ttft_first_request_p50_s": statistics.median(self.first_ttft_s),
            "ttft_later_requests_p50_s": statistics.median(later),
            "ttft_later_requests_p90_s": later[round(0.9 * (len(later) - 1))],
            "cached_tokens_later_requests_mean": statistics.mean(self.later_cached),
        }


def load_engine(bundle: Bundle, device: torch.device, dtype: str, prefix_caching: bool) -> Engine:
    """The engine as the service builds it (FP weights, CPU prepack on the CPU)."""
    config = DecoderConfig(
        bundle=bundle.root, quantization="none", device=str(device), dtype=dtype,
        enable_prefix_caching=prefix_caching,
    )  # fmt: skip
    return load_decoder(config).engine


def requests(count: int, prefix: int, suffix: int, vocab: int, seed: int) -> list[GenerateRequest]:
    generator = torch.Generator().manual_seed(seed)
    shared = torch.randint(100, vocab, (prefix,), generator=generator).tolist()
    stopping = StoppingParams(max_tokens=NEW_TOKENS, ignore_eos=True)
    return [
        GenerateRequest(
            f"s{seed}-r{i}",
            tuple(shared + torch.randint(100, vocab, (suffix,), generator=generator).tolist()),
            stopping=stopping,
        )
        for i in range(count)
    ]


def print_table(report: dict[str, Any], console: Console) -> None:
    table = Table(
        title=f"prefix caching: {report['prefix_tokens']}-token shared prefix + "
        f"{report['suffix_tokens']}-token suffix, one request at a time (bench decoder, greedy)"
    )
    for column in ("prefix caching", "TTFT 1st request p50 ms", "TTFT later p50 / p90 ms",
                   "cached tokens (later)", "later TTFT speedup"):  # fmt: skip
        table.add_column(column, justify="right")
    off = report["off"]["ttft_later_requests_p50_s"]
    for name in ("off", "on"):
        side = report[name]
        table.add_row(
            name,
            f"{side['ttft_first_request_p50_s'] * 1e3:.0f}",
            f"{side['ttft_later_requests_p50_s'] * 1e3:.0f} / "
            f"{side['ttft_later_requests_p90_s'] * 1e3:.0f}",
            f"{side['cached_tokens_later_requests_mean']:.0f}",
            f"{off / side['ttft_later_requests_p50_s']:.2f}x",
        )  # fmt: skip
    console.print(table)
    console.print(f"same greedy tokens: {'yes' if report['same_greedy_tokens'] else 'NO'}")


def main(argv: list[str] | None = None) -> int:
    parser = BenchParser("prefix", __doc__, quick={"prefix": 256, "requests": 4, "repeats": 1})
    parser.add_argument("--prefix", type=int, default=1024, help="shared prefix tokens")
    parser.add_argument("--suffix", type=int, default=32, help="distinct tokens per request")
    parser.add_argument("--requests", type=int, default=8, help="requests per pass")
    parser.add_argument("--repeats", type=int, default=2, help="passes, each with a new prefix")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    args = parser.parse(argv)
    if args.requests < 2:
        parser.error("--requests must be at least 2: the first of a pass finds nothing cached")
    device = resolve_device(args.device)
    console = Console()

    with tempfile.TemporaryDirectory() as tmp:
        bundle = (
            Bundle.load(args.bundle) if args.bundle else build_bundle(Path(tmp) / "bench", "bench")
        )
        sides = {
            name: Side(load_engine(bundle, device, args.dtype, prefix_caching=name == "on"))
            for name in ("off", "on")
        }
    vocab = sides["on"].engine.vocab_size
    console.print(
        f"bench decoder, {args.dtype} on {device}, {torch.get_num_threads()} CPU threads; "
        f"{args.prefix}+{args.suffix} prompt tokens, {args.requests} requests x {args.repeats}"
    )

    for name, side in sides.items():  # warm-up: first calls allocate and pick kernels
        for request in requests(2, 64, 8, vocab, seed=10_000):
            side.engine.add(request)
        while side.engine.has_work():
            side.engine.step()
        console.print(f"warmed up: prefix caching {name}")

    for repeat in range(args.repeats):
        for i, request in enumerate(
            requests(args.requests, args.prefix, args.suffix, vocab, repeat)
        ):
            for side in sides.values():
                side.run(request, first_of_pass=i == 0)

    report: dict[str, Any] = {
        "bench": "prefix",
        "prefix_tokens": args.prefix,
        "suffix_tokens": args.suffix,
        "requests": args.requests,
        "repeats": args.repeats,
        "new_tokens": NEW_TOKENS,
        "device": str(device),
        "dtype": args.dtype,
        "off": sides["off"].summary(),
        "on": sides["on"].summary(),
        "same_greedy_tokens": sides["off"].tokens == sides["on"].tokens,
    }
    report["ttft_later_requests_ratio_off_over_on"] = (
        report["off"]["ttft_later_requests_p50_s"] / report["on"]["ttft_later_requests_p50_s"]
    )
    print_table(report, console)
    return write_report(args.output, report, console, ok=report["same_greedy_tokens"])


if __name__ == "__main__":
    raise SystemExit(main())
