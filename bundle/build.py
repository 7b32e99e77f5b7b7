"""`autoglm bundle init`: build a model bundle deterministically from fixed seeds.

Real architectures (transformers' Glm4ForCausalLM, SiglipVisionModel, Wav2Vec2Model) with
seeded random weights and the byte-level BPE tokenizer shipped in this package, written as
standard Hugging Face folders, because no model hub is reachable from CI.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from transformers import (
    GenerationConfig,
    Glm4Config,
    Glm4ForCausalLM,
    PreTrainedTokenizerFast,
    SiglipImageProcessor,
    SiglipVisionConfig,
    SiglipVisionModel,
    Wav2Vec2Config,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2Model,
)

from bundle import presets
from bundle.fusion_model import FusionConfig, FusionModel
from bundle.layout import SERVED_MODEL_NAME, Bundle
from bundle.special_tokens import ENDOFTEXT, EOS_TOKENS

HERE = Path(__file__).parent
TOKENIZER_FILE = HERE / "tokenizer" / "tokenizer.json"
CHAT_TEMPLATE_FILE = HERE / "chat_template.jinja"
SEED = 0


def build_tokenizer() -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_file=str(TOKENIZER_FILE),
        eos_token=ENDOFTEXT,
        pad_token=ENDOFTEXT,
        chat_template=CHAT_TEMPLATE_FILE.read_text(),
        model_max_length=presets.DECODER_COMMON["max_position_embeddings"],
    )


def _build_decoder(path: Path, preset: str) -> int:
    tokenizer = build_tokenizer()
    eos_ids: list[int] = [tokenizer.convert_tokens_to_ids(t) for t in EOS_TOKENS]  # type: ignore[misc]
    config = Glm4Config(
        **presets.DECODER[preset],
        **presets.DECODER_COMMON,
        eos_token_id=eos_ids,
        pad_token_id=tokenizer.pad_token_id,
    )
    if config.vocab_size < len(tokenizer):
        raise ValueError(f"preset {preset}: vocab {config.vocab_size} < tokenizer {len(tokenizer)}")
    torch.manual_seed(SEED)
    model = Glm4ForCausalLM(config).eval()
    model.save_pretrained(path)
    GenerationConfig(eos_token_id=eos_ids, pad_token_id=tokenizer.pad_token_id).save_pretrained(
        path
    )
    tokenizer.save_pretrained(path)
    return config.hidden_size


def _build_vision(path: Path) -> int:
    config = SiglipVisionConfig(**presets.VISION)
    torch.manual_seed(SEED + 1)
    SiglipVisionModel(config).eval().save_pretrained(path)
    size = presets.VISION["image_size"]
    SiglipImageProcessor(size={"height": size, "width": size}).save_pretrained(path)
    return config.hidden_size


def _build_audio(path: Path) -> int:
    config = Wav2Vec2Config(**presets.AUDIO)
    torch.manual_seed(SEED + 2)
    Wav2Vec2Model(config).eval().save_pretrained(path)
    Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
        return_attention_mask=True,
    ).save_pretrained(path)  # fmt: skip
    return config.hidden_size


def _build_fusion(path: Path, vision: int, audio: int, decoder: int) -> None:
    config = FusionConfig(
        vision_hidden_size=vision, audio_hidden_size=audio, hidden_size=decoder, **presets.FUSION
    )
    torch.manual_seed(SEED + 3)
    FusionModel(config).save_pretrained(path)


def build_bundle(root: Path | str, preset: str = "default") -> Bundle:
    """Write a complete bundle at root (atomically: built beside it, then renamed)."""
    if preset not in presets.PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {presets.PRESETS}")
    with staged(root) as staging:
        decoder = _build_decoder(staging / "decoder", preset)
        vision = _build_vision(staging / "vision")
        audio = _build_audio(staging / "audio")
        _build_fusion(staging / "fusion", vision, audio, decoder)
        Bundle(
            root=staging,
            served_model_name=SERVED_MODEL_NAME,
            parts={part: part for part in ("decoder", "vision", "audio", "fusion")},
        ).save()
    return Bundle.load(root)


@contextlib.contextmanager
def staged(root: Path | str) -> Iterator[Path]:
    """A fresh folder beside root that replaces root when the block succeeds, so a failed or
    interrupted build never leaves half a bundle where a complete one is expected."""
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        yield staging
        if root.exists():
            shutil.rmtree(root)
        staging.rename(root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
