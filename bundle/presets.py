"""Architectures of the built-in bundles: real Hugging Face configs at toy or bench scale."""

from __future__ import annotations

from typing import Any

# The default decoder: a few million parameters, enough to exercise every code path on a CPU.
# Widths are multiples of 128 so GPTQ's group size 128 divides every Linear's input.
DECODER: dict[str, dict[str, Any]] = {
    "default": dict(
        vocab_size=4096, hidden_size=256, num_hidden_layers=4, num_attention_heads=8,
        num_key_value_heads=2, head_dim=32, intermediate_size=768,
    ),
    # About 150M parameters: what the benchmarks run on.
    "bench": dict(
        vocab_size=32000, hidden_size=1024, num_hidden_layers=8, num_attention_heads=16,
        num_key_value_heads=2, head_dim=64, intermediate_size=2816,
    ),
}  # fmt: skip
DECODER_COMMON: dict[str, Any] = dict(
    max_position_embeddings=8192, rms_norm_eps=1e-5, attention_bias=True,
    tie_word_embeddings=False,
)  # fmt: skip

# SigLIP-style vision tower: 64x64 images in 8x8 patches = 64 tokens per image.
VISION: dict[str, Any] = dict(
    hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
    image_size=64, patch_size=8,
)  # fmt: skip

# Wav2Vec2-style audio tower: the usual 7-layer conv front-end (320x downsampling, so about
# 50 frames per second of 16 kHz audio) at a small width.
AUDIO: dict[str, Any] = dict(
    hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
    conv_dim=(64,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
    do_stable_layer_norm=True, feat_extract_norm="layer",
)  # fmt: skip

FUSION: dict[str, Any] = dict(num_attention_heads=4, num_layers=1)

PRESETS = tuple(DECODER)
# `autoglm bundle init --preset NAME` for GLM-4.1V-shaped bundles: NAME -> bundle/glm4v.py preset.
GLM4V_PRESETS = {"phone": "phone", "glm4v-tiny": "tiny"}
BUNDLE_PRESETS = PRESETS + tuple(GLM4V_PRESETS)
