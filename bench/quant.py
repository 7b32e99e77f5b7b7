"""What each decoder quantization saves and costs, against FP32, on the bench decoder.

For FP32, BF16, GPTQ-4bit, NF4 and INT8 (the quantized ones keep their other weights in
bf16, as a GPTQ checkpoint stores them in 16 bits; GPTQ-4bit is also run with fp32 elsewhere,
the CPU default, and with its lm_head quantized too, ``autoglm quantize --lm-head``):

- decoder weight bytes per component;
- decode latency per step at batch 1 and 16, on the serving engine (``services.decoder``) on
  ``--device`` (the CPU by default), greedy; the variants take turns over a few rounds and
  each keeps its best, since other processes share the machine;
- distortion of the next-token distributions against FP32 (KL and greedy agreement) on text
  GPTQ did not calibrate on (the last 20% of the calibration file), teacher-forced with
  transformers' Glm4ForCausalLM carrying the same quantized modules.

Also GPTQ against round-to-nearest on real weights: all-MiniLM-L6-v2's sentence embeddings,
cosine to FP32.

    python -m bench.quant [--quick] [--bundle PATH] [--device cuda:0]
                          [--output bench/results/quant.json]
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from transformers import AutoTokenizer, Glm4ForCausalLM

from bench.minilm_fidelity import minilm_fidelity
from bench.quant_variants import VARIANTS, distortion, latencies, load_engine, weight_bytes
from bench.report import BenchParser, write_report
from bundle.build import build_bundle
from bundle.layout import Bundle
from quantize.cli import DEFAULT_CALIBRATION
from quantize.layerwise import calibration_ids
from services.cli import main as autoglm

TARGETS = {"weight_memory_reduction": 0.60, "decode_latency_b1_reduction": 0.40}


def print_tables(results: list[dict[str, Any]], device: str, console: Console) -> None:
    base = results[0]
    memory = Table(title="decoder weights (bench decoder), MB")
    for column in ("variant", "other weights", "layer linears", "embed + lm_head", "total",
                   "vs FP32"):  # fmt: skip
        memory.add_column(column, justify="right")
    for r in results:
        w = r["weight_bytes"]
        memory.add_row(
            r["name"], r["dtype"], f"{w['layer_linears'] / 1e6:.1f}",
            f"{(w['embeddings'] + w['lm_head']) / 1e6:.1f}", f"{w['total'] / 1e6:.1f}",
            f"{w['total'] / base['weight_bytes']['total']:.2f}",
        )  # fmt: skip
    console.print(memory)
    speed = Table(title=f"decode step (serving engine, {device}) and distortion vs FP32")
    for column in ("variant", "b1 ms", "vs FP32", "b16 ms", "vs FP32", "KL", "greedy agree"):
        speed.add_column(column, justify="right")
    for r in results:
        b1, b16 = r["decode_step_s_b1"], r["decode_step_s_b16"]
        speed.add_row(
            r["name"], f"{b1 * 1e3:.1f}", f"{b1 / base['decode_step_s_b1']:.2f}",
            f"{b16 * 1e3:.1f}", f"{b16 / base['decode_step_s_b16']:.2f}",
            f"{r['kl']:.4f}", f"{r['greedy_agreement']:.3f}",
        )  # fmt: skip
    console.print(speed)


def split_text(text: str, folder: Path) -> tuple[Path, str]:
    """The first 80% of the calibration text (as a file) for GPTQ, the rest held out."""
    cut = text.rfind("\n\n", 0, int(len(text) * 0.8))
    path = folder / "calibration.txt"
    path.write_text(text[:cut])
    return path, text[cut:]


def linked_bundle(bundle: Bundle, root: Path) -> Bundle:
    """A second bundle sharing every part of ``bundle`` but the GPTQ checkpoint: its folders
    are real, their entries symlinks (a part that is itself a symlink leads out of the bundle,
    which Bundle.load refuses)."""
    root.mkdir()
    for path in bundle.root.iterdir():
        if path == bundle.decoder_gptq:
            continue
        if path.is_dir():
            (root / path.name).mkdir()
            for entry in path.iterdir():
                (root / path.name / entry.name).symlink_to(entry.resolve())
        else:
            (root / path.name).symlink_to(path.resolve())
    return Bundle.load(root)


def main(argv: list[str] | None = None) -> int:
    parser = BenchParser(
        "quant",
        __doc__,
        quick={"new_tokens": 8, "rounds": 1, "minilm": False},
        device_help="where the engines run (distortion: CPU)",
    )
    parser.add_argument("--prompt", type=int, default=64, help="prompt tokens per request")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens decoded per request")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved latency rounds")
    parser.add_argument("--samples", type=int, default=16, help="GPTQ calibration windows")
    parser.add_argument(
        "--no-minilm", dest="minilm", action="store_false", help="skip the trained-MiniLM check"
    )
    args = parser.parse(argv)
    console = Console()

    with tempfile.TemporaryDirectory() as tmp:
        bundle = Bundle.load(args.bundle) if args.bundle else build_bundle(Path(tmp) / "b", "bench")
        calibration, held_out = split_text(DEFAULT_CALIBRATION.read_text(), Path(tmp))
        started = time.perf_counter()
        flags = ["--calibration", str(calibration), "--samples", str(args.samples)]
        # both GPTQ checkpoints in linked bundles: a given bundle's own is left as it is
        plain = linked_bundle(bundle, Path(tmp) / "gptq")
        if autoglm(["quantize", str(plain.root), *flags]) != 0:
            return 1
        quantize_s = time.perf_counter() - started
        with_head = linked_bundle(bundle, Path(tmp) / "lm-head")
        if autoglm(["quantize", str(with_head.root), "--lm-head", *flags]) != 0:
            return 1
        bundles = {False: plain, True: with_head}  # by Variant.lm_head

        tokens = AutoTokenizer.from_pretrained(bundle.decoder)(held_out, verbose=False)
        eval_ids = calibration_ids(tokens["input_ids"], 4, 128)
        fp32 = Glm4ForCausalLM.from_pretrained(bundle.decoder, dtype=torch.float32).eval()
        with torch.inference_mode():
            reference = fp32(input_ids=eval_ids).logits.float()
        del fp32
        results: list[dict[str, Any]] = []
        for variant in VARIANTS:
            scores = distortion(bundles[variant.lm_head], variant, eval_ids, reference)
            results.append(dataclasses.asdict(variant) | scores)
        engines = {
            v.name: load_engine(bundles[v.lm_head], v, args.prompt, args.device) for v in VARIANTS
        }
        for result in results:
            result["weight_bytes"] = weight_bytes(engines[result["name"]].model)
        steps = latencies(engines, args, console)
        for result in results:
            result["decode_step_s_b1"] = steps[result["name"]][1]
            result["decode_step_s_b16"] = steps[result["name"]][16]
        del engines
    print_tables(results, args.device, console)
    console.print(
        f"decode latency: the serving engine (services.decoder) on {args.device}, best of "
        f"{args.rounds} interleaved rounds; distortion: transformers' Glm4ForCausalLM"
    )

    base = results[0]
    gptq = next(r for r in results if r["name"] == "GPTQ-4bit")
    achieved = {
        "weight_memory_reduction": 1
        - gptq["weight_bytes"]["total"] / base["weight_bytes"]["total"],
        "decode_latency_b1_reduction": 1 - gptq["decode_step_s_b1"] / base["decode_step_s_b1"],
    }
    for key, target in TARGETS.items():
        verdict = "met" if achieved[key] >= target else "MISSED"
        console.print(f"GPTQ-4bit {key}: {achieved[key]:.0%} (target {target:.0%}) {verdict}")
    minilm = minilm_fidelity() if args.minilm else None
    if minilm:
        console.print(
            f"all-MiniLM-L6-v2, {minilm['bits']}-bit g{minilm['group_size']}: mean cosine to FP32 "
            f"GPTQ {minilm['gptq_mean_cosine']:.4f}, RTN {minilm['rtn_mean_cosine']:.4f}"
        )
    report = {
        "bench": "quant",
        "decode_model": "services.decoder (serving engine)",
        "distortion_model": "transformers Glm4ForCausalLM with the same quantized modules",
        "distortion_text": "the last 20% of quantize/calibration.txt (GPTQ saw the first 80%)",
        "gptq_quantize_s": quantize_s,
        "device": args.device,
        "prompt_tokens": args.prompt,
        "new_tokens": args.new_tokens,
        "results": results,
        "targets": TARGETS,
        "gptq_achieved": achieved,
        "minilm": minilm,
    }  # fmt: skip
    return write_report(args.output, report, console)


if __name__ == "__main__":
    raise SystemExit(main())
