"""A tiny random GLM-4.1V checkpoint in the real layout, for the vision and fusion tests.

Stands in until bundle/glm4v.py's build_glm4v_checkpoint is on main (then it goes)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import Glm4vConfig, Glm4vForConditionalGeneration
from transformers.models.glm4v.image_processing_pil_glm4v import Glm4vImageProcessorPil


def build_tiny_glm4v(out_dir: Path, seed: int = 0) -> Path:
    config = Glm4vConfig(
        text_config=dict(
            vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, initializer_range=0.1,
            rope_parameters={
                "rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1],
                "partial_rotary_factor": 0.5,
            },
        ),
        vision_config=dict(
            depth=2, hidden_size=32, num_heads=4, out_hidden_size=64, intermediate_size=96,
            image_size=56, initializer_range=0.1,
        ),
        image_token_id=500, image_start_token_id=501, image_end_token_id=502,
        video_token_id=503, video_start_token_id=504, video_end_token_id=505,
    )  # fmt: skip
    torch.manual_seed(seed)
    Glm4vForConditionalGeneration(config).eval().save_pretrained(out_dir)
    Glm4vImageProcessorPil().save_pretrained(out_dir)
    return out_dir
