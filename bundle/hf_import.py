"""`autoglm bundle import HF_DIR [BUNDLE]`: a Hugging Face checkpoint becomes a bundle in place.

Only bundle.json is written; the weights stay where they are (a 9B checkpoint is ~20 GB). The
checkpoint's own config.json, read through transformers' config classes, is each part's config:
no copy that could drift from it. Every part path is relative and inside the bundle folder, so
the checkpoint must be the bundle folder itself (the default) or a folder inside it; a bundle
folder elsewhere would need a path or a symlink out of itself, which breaks as soon as the folder
is moved or mounted into a container, so that is refused.

Everything that would make serving fail later is checked here, with a message naming it:
the architecture, the weights (and that every shard of the index is there), the tokenizer, the
chat template, the image processor and the token ids the gateway needs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from transformers import AutoConfig, PretrainedConfig

from bundle.checkpoint import INDEX_FILE, weight_files
from bundle.layout import GLM4, GLM4V, SERVED_MODEL_NAME, Bundle, inside_root

# Hugging Face architecture -> bundle kind, and the weight names each kind's services read.
ARCHITECTURE_KINDS = {"Glm4vForConditionalGeneration": GLM4V, "Glm4ForCausalLM": GLM4}
WEIGHT_PREFIXES = {
    GLM4V: ("model.language_model.", "model.visual.", "lm_head."),
    GLM4: ("model.", "lm_head."),
}
CHAT_TEMPLATE_FILE = "chat_template.jinja"
PREPROCESSOR_FILE = "preprocessor_config.json"
IMAGE_PROCESSOR_TYPES = ("Glm4vImageProcessor", "Glm4vImageProcessorPil")


class ImportRefused(ValueError):
    """The checkpoint cannot be served; the message says what is missing or unsupported."""


def _refuse(checkpoint: Path, reason: str) -> ImportRefused:
    return ImportRefused(f"cannot import {checkpoint}: {reason}")


def read_config(checkpoint: Path) -> tuple[PretrainedConfig, str]:
    """The checkpoint's config and its bundle kind, or ImportRefused."""
    if not (checkpoint / "config.json").is_file():
        raise _refuse(checkpoint, "no config.json (is this a Hugging Face checkpoint folder?)")
    try:
        config = AutoConfig.from_pretrained(checkpoint)
    except (ValueError, KeyError, OSError) as exc:
        raise _refuse(checkpoint, f"transformers cannot read its config.json ({exc})") from None
    architectures = list(getattr(config, "architectures", None) or [])
    kinds = [ARCHITECTURE_KINDS[a] for a in architectures if a in ARCHITECTURE_KINDS]
    if not kinds:
        raise _refuse(
            checkpoint,
            f"unsupported architecture {architectures or config.model_type!r}; autoglm serves "
            f"{' and '.join(ARCHITECTURE_KINDS)} checkpoints",
        )
    return config, kinds[0]


def _check_weights(checkpoint: Path, kind: str, config: PretrainedConfig) -> None:
    try:
        files = weight_files(checkpoint)
    except FileNotFoundError:
        found = sorted(p.name for p in checkpoint.glob("*.bin"))
        hint = f" (found {found[0]}...: only safetensors are read)" if found else ""
        raise _refuse(checkpoint, f"no model.safetensors and no {INDEX_FILE}{hint}") from None
    missing = sorted(name for name in files if not (checkpoint / name).is_file())
    if missing:
        raise _refuse(checkpoint, f"{INDEX_FILE} names shards that are missing: {missing}")
    names = [n for tensors in files.values() for n in tensors]
    tied = bool(getattr(config, "tie_word_embeddings", False))
    for prefix in WEIGHT_PREFIXES[kind]:
        if prefix == "lm_head." and tied:
            continue
        if not any(n.startswith(prefix) for n in names):
            raise _refuse(checkpoint, f"its weights have no {prefix}* tensors")


def _check_rope(checkpoint: Path, config: PretrainedConfig, kind: str) -> None:
    text = config.get_text_config()
    rope = dict(text.rope_parameters or {})
    if rope.get("rope_type", "default") != "default":
        raise _refuse(checkpoint, f"rope_type {rope['rope_type']!r} is not supported")
    if kind != GLM4V:
        return
    head_dim = text.hidden_size // text.num_attention_heads
    rotary = int(head_dim * rope.get("partial_rotary_factor", 1.0))
    section = rope.get("mrope_section")
    if not section or len(section) != 3 or sum(section) != rotary // 2:
        raise _refuse(
            checkpoint,
            f"text_config.rope_parameters.mrope_section {section} must be 3 numbers summing to "
            f"{rotary // 2} (head_dim {head_dim} x partial_rotary_factor / 2)",
        )


def _check_tokenizer(checkpoint: Path, kind: str, config: PretrainedConfig) -> None:
    if not (checkpoint / "tokenizer.json").is_file():
        raise _refuse(checkpoint, "no tokenizer.json (a fast tokenizer is required)")
    tokenizer_config = checkpoint / "tokenizer_config.json"
    in_config = tokenizer_config.is_file() and "chat_template" in json.loads(
        tokenizer_config.read_text()
    )
    if not (checkpoint / CHAT_TEMPLATE_FILE).is_file() and not in_config:
        raise _refuse(checkpoint, f"no chat template ({CHAT_TEMPLATE_FILE} or tokenizer_config)")
    vocab = json.loads((checkpoint / "tokenizer.json").read_text())
    known = {t["id"] for t in vocab.get("added_tokens", [])} | set(vocab["model"]["vocab"].values())
    if kind == GLM4V:
        for field in ("image_token_id", "image_start_token_id", "image_end_token_id"):
            token_id = getattr(config, field, None)
            if token_id not in known:
                raise _refuse(checkpoint, f"config.json {field} {token_id} is not in its tokenizer")


def _check_image_processor(checkpoint: Path, config: PretrainedConfig) -> None:
    path = checkpoint / PREPROCESSOR_FILE
    if not path.is_file():
        raise _refuse(checkpoint, f"no {PREPROCESSOR_FILE} (the image processor's settings)")
    settings = json.loads(path.read_text())
    kind = settings.get("image_processor_type")
    if kind not in IMAGE_PROCESSOR_TYPES:
        raise _refuse(
            checkpoint, f"{PREPROCESSOR_FILE}: image processor {kind!r} is not GLM-4.1V's"
        )
    size = settings.get("size") or {}
    if not {"shortest_edge", "longest_edge"} <= set(size):
        raise _refuse(checkpoint, f"{PREPROCESSOR_FILE}: size needs shortest_edge and longest_edge")
    vision = config.vision_config
    expected = {
        "patch_size": vision.patch_size,
        "temporal_patch_size": vision.temporal_patch_size,
        "merge_size": vision.spatial_merge_size,
    }
    for key, value in expected.items():
        if settings.get(key, value) != value:
            raise _refuse(
                checkpoint, f"{PREPROCESSOR_FILE}: {key} {settings[key]} but the tower has {value}"
            )


def check_checkpoint(checkpoint: Path) -> str:
    """The checkpoint's bundle kind if autoglm can serve it, else ImportRefused."""
    config, kind = read_config(checkpoint)
    if getattr(config, "quantization_config", None):
        raise _refuse(
            checkpoint,
            "it is already quantized (quantization_config in config.json); import the FP16/BF16 "
            "checkpoint, then run `autoglm quantize`",
        )
    _check_weights(checkpoint, kind, config)
    _check_rope(checkpoint, config, kind)
    _check_tokenizer(checkpoint, kind, config)
    if kind == GLM4V:
        _check_image_processor(checkpoint, config)
    return kind


def import_checkpoint(
    checkpoint: Path | str,
    bundle_dir: Path | str | None = None,
    served_model_name: str = SERVED_MODEL_NAME,
) -> Bundle:
    """Write bundle.json for the checkpoint (in bundle_dir, by default the checkpoint folder)."""
    checkpoint = Path(checkpoint)
    root = Path(bundle_dir) if bundle_dir is not None else checkpoint
    if not checkpoint.is_dir():
        raise ImportRefused(f"cannot import {checkpoint}: no such folder")
    relative = os.path.relpath(checkpoint.resolve(), root.resolve())
    try:
        inside_root(root, relative, "the checkpoint")
    except ValueError:
        raise ImportRefused(
            f"cannot import {checkpoint} into {root}: the checkpoint must be the bundle folder or "
            "inside it, so that the bundle refers to it by a relative path and can be moved or "
            f"mounted as one folder; run `autoglm bundle import {checkpoint}` to make it its own "
            "bundle"
        ) from None
    kind = check_checkpoint(checkpoint)
    relative = Path(relative).as_posix()
    parts = {"decoder": relative}
    if kind == GLM4V:
        parts |= {"vision": relative, "fusion": relative}
    bundle = Bundle(root=root, served_model_name=served_model_name, parts=parts, architecture=kind)
    bundle.save()
    return bundle


def cli(args: argparse.Namespace) -> int:
    try:
        bundle = import_checkpoint(args.checkpoint, args.bundle, args.served_model_name)
    except ImportRefused as exc:
        print(f"autoglm: {exc}", file=sys.stderr)
        return 2
    print(
        f"imported {args.checkpoint} as a {bundle.architecture} bundle at {bundle.root} "
        f"({', '.join(bundle.modalities)}; served as {bundle.served_model_name})"
    )
    return 0
