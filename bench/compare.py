"""The stack against llama.cpp's own server on the same decoder weights (issue 12's table).

Ours: `autoglm up` on the bench bundle, GPTQ 4-bit, as `make up` serves it. Theirs: llama.cpp's
native ``llama-server``, built from the llama.cpp that the llama-cpp-python sdist on PyPI vendors,
on the bench decoder converted to GGUF with that source's own ``convert_hf_to_gguf.py`` and
quantized to Q4_0 with its ``llama-quantize``; 16 parallel slots, continuous batching, 2 threads.
Source, build and GGUF files are cached under ~/.cache/autoglm-bench (the first build takes a
while on two cores). Both servers are driven by the same streaming chat client
(bench/chat_stream.py's, the openai SDK), greedy, EOS ignored, ``--max-tokens`` new tokens, at
concurrency 1 and 16: output tok/s and TTFT p50 per cell, ours over theirs, against the issue's
targets.

    python -m bench.compare [--quick] [--bundle PATH] [--requests 32] [--max-tokens 128]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
from rich.console import Console
from rich.table import Table

from bench.chat_requests import user_content
from bench.chat_stream import REQUEST_TIMEOUT_S, run_cell, summarize
from bench.report import BenchParser, write_report
from bench.served_stack import launched_stack
from bundle.build import build_bundle
from bundle.layout import Bundle
from services.cli import main as autoglm
from testkit.processes import free_port

LLAMA_CPP_PYTHON = "0.3.36"
CACHE = Path.home() / ".cache" / "autoglm-bench"
# The bench tokenizer is byte-level BPE split by GPT-2's regex (bundle/train_tokenizer.py);
# llama.cpp's converter only knows pre-tokenizers by the hash of known models' output.
PRE_TOKENIZER = "gpt-2"
CONCURRENCY = (1, 16)
THREADS = 2
# ours / llama-server: tok/s at c=1 and c=16 (at least), TTFT p50 at c=16 (at most)
TARGETS = {"tok_s_c1": 0.5, "tok_s_c16": 1.0, "ttft_p50_c16": 0.5}
CONVERT = """
import sys
source, pre, *argv = sys.argv[1:]
sys.path[:0] = [source, source + "/gguf-py"]
import conversion.base
conversion.base.TextModel.get_vocab_base_pre = lambda self, tokenizer: pre
import convert_hf_to_gguf
sys.argv = ["convert_hf_to_gguf.py", *argv]
convert_hf_to_gguf.main()
"""


def run(command: list[str], log: Path) -> None:
    with log.open("a") as out:
        out.write(f"$ {' '.join(command)}\n")
        out.flush()
        if subprocess.run(command, stdout=out, stderr=subprocess.STDOUT).returncode:
            raise RuntimeError(f"{command[0]} failed; see {log}")


def llama_source(log: Path) -> Path:
    """llama.cpp as vendored by the llama-cpp-python sdist (pip download, cached)."""
    name = f"llama_cpp_python-{LLAMA_CPP_PYTHON}"
    source = CACHE / name / "vendor" / "llama.cpp"
    if not source.is_dir():
        pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
        run([*pip, f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "-d", str(CACHE)], log)
        with tarfile.open(CACHE / f"{name}.tar.gz") as sdist:
            sdist.extractall(CACHE, filter="data")
    return source


def isa_options() -> list[str]:
    """ggml's x86 ISA switches for what this CPU has, AMX left off.

    Not GGML_NATIVE: with -march=native ggml compiles its AMX matmul, which dies here with an
    illegal instruction (``tilezero`` in ggml_backend_amx_mul_mat, also with the process's AMX
    permission requested before it starts; oneDNN runs AMX fine here), so that llama-server
    could not serve at all.
    """
    flags = (
        set(Path("/proc/cpuinfo").read_text().split()) if Path("/proc/cpuinfo").exists() else set()
    )
    switches = {"avx": "AVX", "avx2": "AVX2", "fma": "FMA", "f16c": "F16C", "bmi2": "BMI2",
                "avx_vnni": "AVX_VNNI", "avx512f": "AVX512", "avx512_vnni": "AVX512_VNNI",
                "avx512_bf16": "AVX512_BF16", "avx512vbmi": "AVX512_VBMI"}  # fmt: skip
    return ["-DGGML_NATIVE=OFF"] + [
        f"-DGGML_{name}={'ON' if flag in flags else 'OFF'}" for flag, name in switches.items()
    ]


def llama_binaries(source: Path, log: Path) -> Path:
    """llama-server and llama-quantize, Release, without curl; the build folder is cached."""
    build = CACHE / "build"
    options = ["-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF",
               "-DLLAMA_BUILD_EXAMPLES=OFF", *isa_options()]  # fmt: skip
    run(["cmake", "-S", str(source), "-B", str(build), *options], log)
    targets = ["--target", "llama-server", "llama-quantize"]
    run(["cmake", "--build", str(build), "--config", "Release", "-j", "2", *targets], log)
    return build / "bin"


def q4_0_gguf(decoder: Path, source: Path, binaries: Path, log: Path) -> Path:
    """The bench decoder in GGUF, Q4_0, cached by the hash of its weights."""
    digest = hashlib.sha256()
    for weights in sorted(decoder.glob("*.safetensors")):
        digest.update(weights.read_bytes())
    stem = CACHE / "gguf" / digest.hexdigest()[:16]
    quantized = stem.with_suffix(".q4_0.gguf")
    if not quantized.is_file():
        stem.parent.mkdir(parents=True, exist_ok=True)
        f16 = stem.with_suffix(".f16.gguf")
        convert = [str(decoder), "--outtype", "f16", "--outfile", str(f16)]
        run([sys.executable, "-c", CONVERT, str(source), PRE_TOKENIZER, *convert], log)
        run([str(binaries / "llama-quantize"), str(f16), str(quantized), "Q4_0"], log)
    return quantized


@contextmanager
def llama_server(binaries: Path, gguf: Path, context: int, log: Path) -> Iterator[str]:
    """llama-server on a free port: 16 slots, continuous batching, 2 threads; until ready."""
    port = free_port()
    command = [str(binaries / "llama-server"), "-m", str(gguf), "--host", "127.0.0.1",
               "--port", str(port), "-np", str(max(CONCURRENCY)), "-cb", "-t", str(THREADS),
               "-c", str(context * max(CONCURRENCY)), "--jinja"]  # fmt: skip
    with log.open("a") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while not _ready(url):
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"llama-server did not become ready; see {log}")
            time.sleep(1)
        yield url
    finally:
        server.terminate()
        server.wait(30)


def _ready(url: str) -> bool:
    """/health answers 200 once the model is loaded (503 while loading)."""
    try:
        return httpx.get(f"{url}/health", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


async def cells(
    url: str, model: str, args: argparse.Namespace, every_token_streamed: bool
) -> list[dict[str, Any]]:
    # llama-server can drop a kept-alive connection just as the next request goes out on it
    # ("Server disconnected without sending a response" between two requests at c=1, about one
    # run in three here), so both sides are asked to close each connection after its request
    async with openai.AsyncOpenAI(
        base_url=f"{url}/v1",
        api_key="EMPTY",
        max_retries=0,
        timeout=REQUEST_TIMEOUT_S,
        default_headers={"Connection": "close"},
    ) as client:
        warm_up = [user_content("text", 10**6)]
        await run_cell(client, model, warm_up, 1, 4, every_token_streamed)
        results = []
        for concurrency in CONCURRENCY:
            contents = [user_content("text", i) for i in range(args.requests)]
            samples, seconds = await run_cell(
                client, model, contents, concurrency, args.max_tokens, every_token_streamed
            )
            cell = summarize("text", concurrency, samples, seconds)
            del cell["samples"]
            results.append(cell)
        return results


def bench_bundle(given: Path | None, console: Console) -> Bundle:
    """The given bundle, else the bench preset built and quantized as `make up` does (cached)."""
    root = given or CACHE / "bench-bundle"
    if given is None and not (root / "bundle.json").is_file():
        console.print(f"building the bench bundle in {root}")
        build_bundle(root, "bench")
    if autoglm(["quantize", str(root), "--bits", "4", "--group-size", "128"]) != 0:
        raise RuntimeError(f"autoglm quantize {root} failed")
    return Bundle.load(root)


def compare(ours: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> dict[str, float]:
    by_c = {c["concurrency"]: c for c in ours}, {c["concurrency"]: c for c in theirs}
    return {
        "tok_s_c1": by_c[0][1]["output_tokens_per_s"] / by_c[1][1]["output_tokens_per_s"],
        "tok_s_c16": by_c[0][16]["output_tokens_per_s"] / by_c[1][16]["output_tokens_per_s"],
        "ttft_p50_c16": by_c[0][16]["ttft_p50_s"] / by_c[1][16]["ttft_p50_s"],
    }


def print_table(ours: list[dict[str, Any]], theirs: list[dict[str, Any]], ratios: dict[str, float],
                console: Console) -> None:  # fmt: skip
    table = Table(title="the stack vs llama-server, streaming chat, same decoder weights")
    # p90 and the prompt tokens served from cache explain a p50: llama-server's prompt cache is
    # per slot, so at c=16 the requests landing on a slot that never saw the system prompt
    # prefill all of it, and its TTFT splits into a fast and a slow group
    for column in ("", "c=1 tok/s", "c=16 tok/s", "TTFT p50 at c=16", "p90", "cached at c=16"):
        table.add_column(column, justify="right")
    for name, rows in (("ours (GPTQ 4-bit)", ours), ("llama-server (Q4_0)", theirs)):
        by_c = {c["concurrency"]: c for c in rows}
        table.add_row(name, f"{by_c[1]['output_tokens_per_s']:.0f}",
                      f"{by_c[16]['output_tokens_per_s']:.0f}",
                      f"{by_c[16]['ttft_p50_s'] * 1e3:.0f} ms",
                      f"{by_c[16]['ttft_p90_s'] * 1e3:.0f} ms",
                      f"{by_c[16]['cached_fraction']:.0%}")  # fmt: skip
    table.add_row("ratio", *(f"{ratios[key]:.2f}x" for key in TARGETS), "", "")
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    parser = BenchParser("compare", __doc__, quick={"requests": 16, "max_tokens": 32})
    parser.add_argument("--requests", type=int, default=32, help="requests per concurrency")
    parser.add_argument("--max-tokens", type=int, default=128, help="new tokens per request")
    args = parser.parse(argv)
    if args.requests < max(CONCURRENCY):
        parser.error(f"--requests must be at least {max(CONCURRENCY)}")
    console = Console()
    CACHE.mkdir(parents=True, exist_ok=True)
    log = CACHE / "compare.log"
    source = llama_source(log)
    binaries = llama_binaries(source, log)
    bundle = bench_bundle(args.bundle, console)
    gguf = q4_0_gguf(bundle.decoder, source, binaries, log)
    with launched_stack(bundle.root, args.device, CACHE / "stack.log", console) as stack:
        ours = asyncio.run(cells(stack.url, bundle.served_model_name, args, True))
    with llama_server(binaries, gguf, 1024, log) as url:
        theirs = asyncio.run(cells(url, "bench", args, False))
    ratios = compare(ours, theirs)
    print_table(ours, theirs, ratios, console)
    met = {
        key: ratios[key] <= target if key.startswith("ttft") else ratios[key] >= target
        for key, target in TARGETS.items()
    }
    report = {"bench": "compare", "llama_cpp_python": LLAMA_CPP_PYTHON, "max_tokens":
              args.max_tokens, "requests": args.requests, "threads": THREADS, "ours": ours,
              "llama_server": theirs, "ratios": ratios, "targets": TARGETS, "met": met}  # fmt: skip
    return write_report(args.output, report, console, ok=all(met.values()))


if __name__ == "__main__":
    raise SystemExit(main())
