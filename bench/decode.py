"""Decode throughput and time to first token: the engine against transformers' generate.

Both run on the bench decoder's weights (``build_bundle(preset="bench")``, about 150M
parameters) in this process, on the same device and in the same dtype (``--device``,
``--dtype``: fp32 on the CPU by default), greedy, ``--new-tokens`` tokens per request with EOS
ignored. The engine runs as the service would on that device (on the CPU: its Linear weights
repacked for oneDNN, ``--no-cpu-prepack`` for plain torch).
Concurrency 1 runs the requests one after another on both; at 4 and 16 the engine gets them all
at once (continuous batching) and transformers gets them as one left-padded batch. Throughput is
generated tokens over wall time (prefill included); TTFT is from submission to the first token.

    python -m bench.decode [--quick] [--repeats N] [--bundle PATH] [--output PATH]
                           [--device cuda:0 --dtype bfloat16] [--no-cpu-prepack]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from torch import nn
from transformers import Glm4ForCausalLM, LogitsProcessor, LogitsProcessorList

from bench.report import BenchParser, write_report
from bundle.build import build_bundle
from bundle.layout import Bundle
from services.common.device import resolve_device
from services.decoder.config import DecoderConfig
from services.decoder.engine import Engine
from services.decoder.loader import DTYPES, load_decoder
from services.decoder.params import StoppingParams
from services.decoder.types import GenerateRequest


@dataclasses.dataclass(frozen=True)
class Run:
    tokens: int
    seconds: float
    ttft_s: list[float]

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds

    def ttft(self, q: float) -> float:
        ordered = sorted(self.ttft_s)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    @staticmethod
    def sequential(runs: list[Run]) -> Run:
        return Run(
            tokens=sum(r.tokens for r in runs),
            seconds=sum(r.seconds for r in runs),
            ttft_s=[t for r in runs for t in r.ttft_s],
        )


def prompts(count: int, vocab: int, seed: int) -> list[list[int]]:
    """Mixed lengths (32 to 256 tokens), fixed by the seed."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(32, 257, (count,), generator=generator).tolist()
    return [torch.randint(100, vocab, (n,), generator=generator).tolist() for n in lengths]


def run_engine(
    engine: Engine, batch: list[list[int]], new_tokens: int
) -> tuple[Run, list[list[int]]]:
    start = time.perf_counter()
    for i, ids in enumerate(batch):
        stopping = StoppingParams(max_tokens=new_tokens, ignore_eos=True)
        engine.add(GenerateRequest(f"r{i}", tuple(ids), stopping=stopping))
    first: dict[str, float] = {}
    outputs: dict[str, list[int]] = {f"r{i}": [] for i in range(len(batch))}
    while engine.has_work():
        for out in engine.step():
            first.setdefault(out.request_id, time.perf_counter() - start)
            outputs[out.request_id] += out.token_ids
    seconds = time.perf_counter() - start
    tokens = sum(len(t) for t in outputs.values())
    return Run(tokens, seconds, list(first.values())), list(outputs.values())


class _FirstCall(LogitsProcessor):
    """Notes when generate first has logits: after the prefill, before the first token."""

    def __init__(self) -> None:
        self.at: float | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.at is None:
            self.at = time.perf_counter()
        return scores


def run_transformers(
    model: Glm4ForCausalLM, batch: list[list[int]], new_tokens: int, pad_id: int
) -> tuple[Run, list[list[int]]]:
    longest = max(len(ids) for ids in batch)
    padding = [longest - len(ids) for ids in batch]
    input_ids = torch.tensor([[pad_id] * n + ids for n, ids in zip(padding, batch, strict=True)])
    mask = torch.tensor([[0] * n + [1] * (longest - n) for n in padding])
    input_ids, mask = input_ids.to(model.device), mask.to(model.device)
    first = _FirstCall()
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            input_ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
            do_sample=False, pad_token_id=pad_id, logits_processor=LogitsProcessorList([first]),
        )  # fmt: skip
    seconds = time.perf_counter() - start
    assert first.at is not None
    generated = out[:, longest:]
    ttft = [first.at - start] * len(batch)
    return Run(generated.numel(), seconds, ttft), generated.tolist()


@dataclasses.dataclass(frozen=True)
class Sides:
    """The two sides of the contest, on the same weights, device and dtype."""

    engine: Engine
    model: Glm4ForCausalLM
    pad_id: int

    def one_pass(
        self, concurrency: int, requests: list[list[int]], new_tokens: int
    ) -> tuple[Run, Run, bool]:
        """Engine and transformers on the same requests, alternated request by request at
        concurrency 1, so load from other processes hits both alike; and whether their greedy
        tokens agree."""
        engine, model, pad_id = self.engine, self.model, self.pad_id
        if concurrency == 1:
            ours, theirs = [], []
            for ids in requests:
                ours.append(run_engine(engine, [ids], new_tokens))
                theirs.append(run_transformers(model, [ids], new_tokens, pad_id))
            same = [t for _, out in ours for t in out] == [t for _, out in theirs for t in out]
            return (
                Run.sequential([r for r, _ in ours]),
                Run.sequential([r for r, _ in theirs]),
                same,
            )
        engine_run, engine_tokens = run_engine(engine, requests, new_tokens)
        hf_run, hf_tokens = run_transformers(model, requests, new_tokens, pad_id)
        return engine_run, hf_run, engine_tokens == hf_tokens


def measure(
    sides: Sides, concurrency: int, requests: list[list[int]], new_tokens: int, repeats: int
) -> dict[str, Any]:
    """The best of ``repeats`` passes for each side: on a shared machine the fastest pass is
    the one least disturbed by other processes."""
    passes = [sides.one_pass(concurrency, requests, new_tokens) for _ in range(repeats)]
    engine_run = max((p[0] for p in passes), key=lambda r: r.tokens_per_s)
    hf_run = max((p[1] for p in passes), key=lambda r: r.tokens_per_s)
    return {
        "concurrency": concurrency,
        "requests": len(requests),
        "repeats": repeats,
        "engine": _summary(engine_run),
        "transformers": _summary(hf_run),
        "throughput_ratio": engine_run.tokens_per_s / hf_run.tokens_per_s,
        "same_greedy_tokens": all(p[2] for p in passes),
    }


def _summary(run: Run) -> dict[str, float]:
    return {
        "tokens": run.tokens,
        "seconds": run.seconds,
        "tokens_per_s": run.tokens_per_s,
        "ttft_p50_s": run.ttft(0.5),
        "ttft_p90_s": run.ttft(0.9),
    }


def print_table(results: list[dict[str, Any]], console: Console) -> None:
    table = Table(title="decode: engine vs transformers generate (bench decoder, greedy)")
    for column in ("conc.", "engine tok/s", "HF tok/s", "ratio", "ratio vs HF conc. 1",
                   "engine TTFT p50/p90 ms", "HF TTFT p50/p90 ms", "same tokens"):  # fmt: skip
        table.add_column(column, justify="right")
    for r in results:
        e, h = r["engine"], r["transformers"]
        versus_sequential = r.get("ratio_vs_transformers_concurrency_1")
        table.add_row(
            str(r["concurrency"]), f"{e['tokens_per_s']:.1f}", f"{h['tokens_per_s']:.1f}",
            f"{r['throughput_ratio']:.2f}x",
            f"{versus_sequential:.2f}x" if versus_sequential is not None else "-",
            f"{e['ttft_p50_s'] * 1e3:.0f} / {e['ttft_p90_s'] * 1e3:.0f}",
            f"{h['ttft_p50_s'] * 1e3:.0f} / {h['ttft_p90_s'] * 1e3:.0f}",
            "yes" if r["same_greedy_tokens"] else "no",
        )  # fmt: skip
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    parser = BenchParser(
        "decode",
        __doc__,
        quick={"new_tokens": 32, "sequential_requests": 1, "repeats": 1},
        device_help="cpu, cuda or cuda:N (both sides)",
    )
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument(
        "--sequential-requests", type=int, default=3, help="requests at concurrency 1"
    )
    parser.add_argument("--repeats", type=int, default=2, help="passes per side; the best counts")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="both sides")
    parser.add_argument(
        "--cpu-prepack",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the engine's oneDNN weight repacking on the CPU (the service's default)",
    )
    args = parser.parse(argv)
    device = resolve_device(args.device)
    new_tokens, repeats = args.new_tokens, args.repeats
    console = Console()

    with tempfile.TemporaryDirectory() as tmp:
        bundle = (
            Bundle.load(args.bundle) if args.bundle else build_bundle(Path(tmp) / "bench", "bench")
        )
        config = DecoderConfig(
            bundle=bundle.root, quantization="none", device=str(device), dtype=args.dtype,
            cpu_prepack=args.cpu_prepack,
            # passes resend the same prompts: a prefix cache would skip the engine's prefills
            enable_prefix_caching=False,
        )  # fmt: skip
        engine = load_decoder(config).engine
        model = Glm4ForCausalLM.from_pretrained(bundle.decoder, dtype=DTYPES[args.dtype]).eval()
        nn.Module.to(model, device)  # in place; transformers' wrapped .to() confuses mypy
    vocab, pad_id = model.config.vocab_size, model.config.pad_token_id or 0
    params = sum(p.numel() for p in model.parameters())
    console.print(
        f"bench decoder: {params / 1e6:.0f}M parameters, {args.dtype} on {device}, "
        f"{torch.get_num_threads()} CPU threads, engine cpu_prepack={args.cpu_prepack}"
    )

    # warm-up: first calls allocate and pick kernels
    run_engine(engine, prompts(2, vocab, seed=99), 4)
    run_transformers(model, prompts(2, vocab, seed=99), 4, pad_id)

    results: list[dict[str, Any]] = []
    for concurrency in args.concurrency:
        count = args.sequential_requests if concurrency == 1 else concurrency
        requests = prompts(count, vocab, seed=concurrency)
        result = measure(Sides(engine, model, pad_id), concurrency, requests, new_tokens, repeats)
        if results and results[0]["concurrency"] == 1:  # what batching buys over one at a time
            baseline = results[0]["transformers"]["tokens_per_s"]
            result["ratio_vs_transformers_concurrency_1"] = (
                result["engine"]["tokens_per_s"] / baseline
            )
        results.append(result)
        print_table(results[-1:], console)
    print_table(results, console)

    report = {
        "bench": "decode",
        "new_tokens": new_tokens,
        "parameters": params,
        "device": str(device),
        "dtype": args.dtype,
        "cpu_prepack": args.cpu_prepack,
        "results": results,
    }  # fmt: skip
    return write_report(args.output, report, console)


if __name__ == "__main__":
    raise SystemExit(main())
