"""`autoglm quantize BUNDLE`: GPTQ the bundle's decoder into BUNDLE/decoder-gptq/.

Skips the work when a checkpoint made from the same weights, calibration text and settings is
already there, so `make up` can call it on every start.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from quantize.checkpoint import QuantConfig

DEFAULT_CALIBRATION = Path(__file__).with_name("calibration.txt")
QUANTIZER = "autoglm-serve"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", type=Path, help="model bundle directory")
    parser.add_argument("--bits", type=int, choices=(4, 8), default=4)
    parser.add_argument(
        "--group-size", type=int, default=128, help="inputs per scale/zero; -1 = per channel"
    )
    parser.add_argument(
        "--act-order", action="store_true", help="quantize columns by decreasing activation"
    )
    parser.add_argument(
        "--calibration", type=Path, default=DEFAULT_CALIBRATION, help="plain-text file"
    )
    parser.add_argument("--samples", type=int, default=32, help="calibration windows")
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per window")
    parser.add_argument(
        "--damp-percent", type=float, default=0.01, help="Hessian dampening, of its mean diagonal"
    )
    parser.add_argument(
        "--lm-head",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="quantize the lm_head too (default: when its vocabulary packs into 32-bit words). "
        "On the bench decoder the bf16 lm_head was ~35%% of a batch-1 decode step; in 4 bits it "
        "adds 0.002 to the layers' KL against FP32 (bench/quant.py). --no-lm-head keeps it",
    )
    parser.add_argument("--force", action="store_true", help="quantize even if up to date")


def _sha256(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def _validate(args: argparse.Namespace) -> str | None:
    if args.group_size != -1 and args.group_size <= 0:
        return f"--group-size must be positive or -1, got {args.group_size}"
    if args.samples <= 0 or args.seq_len <= 0:
        return "--samples and --seq-len must be positive"
    if not 0 < args.damp_percent < 1:
        return f"--damp-percent must be in (0, 1), got {args.damp_percent}"
    if not args.calibration.is_file():
        return f"calibration file {args.calibration} not found"
    return None


def _lm_head(args: argparse.Namespace, source: Path) -> bool:
    """--lm-head as given, else whether the vocabulary packs (a GLM-4.1V's does: 151,552);
    ValueError when asked for one that does not."""
    from quantize.checkpoint import packs

    if args.lm_head is False:
        return False
    config = json.loads((source / "config.json").read_text())
    vocab = int(config.get("text_config", config)["vocab_size"])
    if packs(vocab, args.bits):
        return True
    words = f"a vocabulary of {vocab} is not a multiple of {32 // args.bits}"
    if args.lm_head:
        raise ValueError(f"--lm-head: {words}, which {args.bits}-bit GPTQ packing needs")
    print(f"lm_head kept in 16 bits: {words} ({args.bits}-bit GPTQ packing)")
    return False


def _wanted(args: argparse.Namespace, source: Path) -> QuantConfig:
    """The checkpoint the flags ask for, with what it is made from in ``meta``: a later run
    that wants the same config finds the work done."""
    from quantize.checkpoint import QuantConfig

    made_from = {
        "quantizer": [QUANTIZER],
        "source_sha256": _sha256(sorted(source.glob("*.safetensors"))),
        "calibration_sha256": _sha256([args.calibration]),
        "samples": args.samples,
        "seq_len": args.seq_len,
    }
    return QuantConfig(
        args.bits, args.group_size, desc_act=args.act_order, damp_percent=args.damp_percent,
        lm_head=_lm_head(args, source), meta=made_from,
    )  # fmt: skip


def cli(args: argparse.Namespace) -> int:
    error = _validate(args)
    if error:
        print(f"autoglm quantize: {error}", file=sys.stderr)
        return 2
    from bundle.layout import Bundle
    from quantize.checkpoint import read_quant_config

    try:
        bundle = Bundle.load(args.bundle)
    except (FileNotFoundError, ValueError) as exc:
        print(f"autoglm quantize: {exc}", file=sys.stderr)
        return 2
    source, dest = bundle.decoder, bundle.decoder_gptq
    try:
        config = _wanted(args, source)
    except ValueError as exc:
        print(f"autoglm quantize: {exc}", file=sys.stderr)
        return 2
    if not args.force and (dest / "quantize_config.json").is_file():
        try:
            if read_quant_config(dest) == config:
                print(f"GPTQ checkpoint at {dest} is up to date")
                return 0
        except ValueError:
            pass  # unreadable or foreign: quantize again
    started = time.perf_counter()
    try:
        _quantize(source, dest, config, args)
    except ValueError as exc:  # e.g. a calibration text shorter than --seq-len
        print(f"autoglm quantize: {exc}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - started
    head = " (lm_head included)" if config.lm_head else ""
    print(f"wrote {args.bits}-bit GPTQ checkpoint{head} to {dest} in {elapsed:.1f}s")
    return 0


def _text_model(source: Path) -> tuple[torch.nn.Module, str, tuple[str, ...]]:
    """transformers' model of the checkpoint, where its decoder layers sit, and the prefixes of
    the tensors its GPTQ checkpoint holds: a GLM-4.1V checkpoint's language model and lm_head
    under their own names (the vision tower stays out: its service quantizes it itself)."""
    from transformers import AutoConfig, Glm4ForCausalLM, Glm4vConfig, Glm4vForConditionalGeneration

    if isinstance(AutoConfig.from_pretrained(source), Glm4vConfig):
        model = Glm4vForConditionalGeneration.from_pretrained(source, dtype="auto").eval()
        return model, "model.language_model.layers", ("model.language_model.", "lm_head.")
    return Glm4ForCausalLM.from_pretrained(source, dtype="auto").eval(), "model.layers", ("",)


def _quantize(source: Path, dest: Path, config: QuantConfig, args: argparse.Namespace) -> None:
    from transformers import AutoTokenizer

    from quantize.checkpoint import write_checkpoint
    from quantize.layerwise import GPTQSettings, calibration_ids, quantize_layers
    from quantize.lm_head import LM_HEAD, quantize_lm_head

    tokenizer = AutoTokenizer.from_pretrained(source)
    # One long text, cut into windows below: no need for the "longer than the model" warning.
    text = args.calibration.read_text(encoding="utf-8")
    token_ids = tokenizer(text, verbose=False)["input_ids"]
    input_ids = calibration_ids(token_ids, args.samples, args.seq_len)
    model, layers_path, keep = _text_model(source)
    # Everything GPTQ does not touch is written as the source has it (dtype included); clones,
    # because safetensors refuses tensors that share memory (tied embeddings).
    unquantized = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(keep)}
    settings = GPTQSettings(
        bits=config.bits,
        group_size=config.group_size,
        act_order=config.desc_act,
        damp_percent=config.damp_percent,
    )
    batches = [{"input_ids": chunk, "use_cache": False} for chunk in input_ids.split(8)]
    quantized = quantize_layers(model.float(), batches, settings, layers_path)
    if config.lm_head:
        quantized[LM_HEAD] = quantize_lm_head(model, batches, settings)
    for name in quantized:
        del unquantized[f"{name}.weight"]
    write_checkpoint(dest, source, unquantized, quantized, config)
