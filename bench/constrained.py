"""The cost of grammar-constrained decoding: decode steps at concurrency 8 without constraints,
with a JSON schema on every request, and with half of them constrained, on the bench decoder.
Both the whole step and its sampling part (where the masks are made and applied; the forward
is the same in every mode) are timed.

Requests sample (temperature 1, seeded) for ``--tokens`` tokens under a schema whose one string
field keeps the grammar open (the widest masks: nearly every token is allowed inside a string),
so every mode decodes the same number of steps. The three modes alternate, so load from other
processes hits them alike. Also reported: the schema's compile time, first and cached.

    python -m bench.constrained [--quick] [--tokens 64] [--repeats 3] [--concurrency 8]
                                [--bundle PATH] [--device cuda:0] [--output PATH]
"""

from __future__ import annotations

import json
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
from services.decoder.config import DecoderConfig
from services.decoder.constraint_spec import Constraint, ConstraintKind
from services.decoder.engine import Engine
from services.decoder.loader import load_decoder
from services.decoder.params import SamplingParams, StoppingParams
from services.decoder.types import GenerateRequest

SCHEMA = {
    "type": "object",
    "properties": {"thought": {"type": "string"}, "done": {"type": "boolean"}},
    "required": ["thought", "done"],
    "additionalProperties": False,
}
MODES = {"none": 0.0, "half": 0.5, "all": 1.0}  # share of constrained requests
PROMPT_TOKENS = 32


def batch(mode: str, concurrency: int, tokens: int, vocab: int, seed: int) -> list[GenerateRequest]:
    constraint = Constraint(ConstraintKind.JSON_SCHEMA, json.dumps(SCHEMA))
    constrained = round(MODES[mode] * concurrency)
    generator = torch.Generator().manual_seed(seed)
    return [
        GenerateRequest(
            f"{mode}-{seed}-{i}",
            tuple(torch.randint(100, vocab, (PROMPT_TOKENS,), generator=generator).tolist()),
            sampling=SamplingParams(temperature=1.0, seed=seed * 100 + i),
            stopping=StoppingParams(max_tokens=tokens, ignore_eos=True),
            constraint=constraint if i < constrained else None,
        )
        for i in range(concurrency)
    ]


class SamplingClock:
    """Times each call of the engine's sampler (wrapped in place: the bench's instrument)."""

    def __init__(self, engine: Engine) -> None:
        self.last = 0.0
        sampler = engine.runner.sampler
        sample = sampler.sample

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            result = sample(*args, **kwargs)
            self.last = time.perf_counter() - start
            return result

        sampler.sample = timed  # type: ignore[method-assign]


def decode_steps(
    engine: Engine, clock: SamplingClock, requests: list[GenerateRequest]
) -> tuple[list[float], list[float]]:
    """Times of the steps where every request decodes (prefill excluded), and of their
    sampling."""
    for request in requests:
        engine.add(request)
    steps: list[float] = []
    sampling: list[float] = []
    made = 0
    while engine.has_work():
        full = engine.stats().running == len(requests) and made >= len(requests)
        start = time.perf_counter()
        outputs = engine.step()
        if full and len(outputs) == len(requests):
            steps.append(time.perf_counter() - start)
            sampling.append(clock.last)
        made += len(outputs)
    return steps, sampling


def compile_times(engine: Engine) -> dict[str, float]:
    assert engine.constraints is not None, "the bundle's decoder has a tokenizer"
    schema = json.dumps({**SCHEMA, "title": f"fresh {time.time()}"})  # not in the cache yet
    constraint = Constraint(ConstraintKind.JSON_SCHEMA, schema)
    start = time.perf_counter()
    engine.constraints.matcher(constraint)
    first = time.perf_counter() - start
    start = time.perf_counter()
    engine.constraints.matcher(constraint)
    return {
        "compile_first_ms": first * 1e3,
        "compile_cached_ms": (time.perf_counter() - start) * 1e3,
    }


def percentiles(name: str, seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    return {
        f"{name}_p50_ms": statistics.median(ordered) * 1e3,
        f"{name}_p90_ms": ordered[round(0.9 * (len(ordered) - 1))] * 1e3,
    }


def print_table(report: dict[str, Any], console: Console) -> None:
    table = Table(
        title=f"constrained decoding: concurrency {report['concurrency']}, "
        f"{report['tokens']} tokens per request (bench decoder, sampled)"
    )
    columns = ("constrained", "step p50 / p90 ms", "sampling p50 / p90 ms", "step p50 vs none")
    for column in columns:
        table.add_column(column, justify="right")
    base = report["modes"]["none"]["step_p50_ms"]
    for mode, side in report["modes"].items():
        table.add_row(
            f"{mode} ({round(MODES[mode] * report['concurrency'])})",
            f"{side['step_p50_ms']:.1f} / {side['step_p90_ms']:.1f}",
            f"{side['sampling_p50_ms']:.2f} / {side['sampling_p90_ms']:.2f}",
            f"{side['step_p50_ms'] / base:.2f}x",
        )
    console.print(table)
    console.print(
        f"schema compile: {report['compile_first_ms']:.1f} ms first, "
        f"{report['compile_cached_ms']:.3f} ms cached (vocabulary {report['vocab_size']})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = BenchParser("constrained", __doc__, quick={"tokens": 24, "repeats": 1})
    parser.add_argument("--tokens", type=int, default=64, help="tokens per request")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of the three modes")
    parser.add_argument("--concurrency", type=int, default=8, help="requests decoding together")
    args = parser.parse(argv)
    console = Console()
    with tempfile.TemporaryDirectory() as tmp:
        bundle = (
            Bundle.load(args.bundle) if args.bundle else build_bundle(Path(tmp) / "bench", "bench")
        )
        config = DecoderConfig(bundle=bundle.root, quantization="none", device=args.device)
        engine = load_decoder(config).engine
    clock = SamplingClock(engine)
    warm_up = batch("all", args.concurrency, 8, engine.vocab_size, seed=999)
    decode_steps(engine, clock, warm_up)
    steps: dict[str, list[float]] = {mode: [] for mode in MODES}
    sampling: dict[str, list[float]] = {mode: [] for mode in MODES}
    for repeat in range(args.repeats):
        for mode in MODES:
            requests = batch(mode, args.concurrency, args.tokens, engine.vocab_size, repeat)
            step_times, sampling_times = decode_steps(engine, clock, requests)
            steps[mode] += step_times
            sampling[mode] += sampling_times
    modes = {
        mode: {
            **percentiles("step", steps[mode]),
            **percentiles("sampling", sampling[mode]),
            "steps": len(steps[mode]),
        }
        for mode in MODES
    }
    report: dict[str, Any] = {
        "bench": "constrained",
        "concurrency": args.concurrency,
        "tokens": args.tokens,
        "repeats": args.repeats,
        "device": str(engine.device),
        "vocab_size": engine.vocab_size,
        "modes": modes,
        **compile_times(engine),
    }
    for key in ("step_p50_ms", "sampling_p50_ms"):
        report[f"all_over_none_{key}"] = modes["all"][key] / modes["none"][key]
    print_table(report, console)
    return write_report(args.output, report, console)


if __name__ == "__main__":
    raise SystemExit(main())
