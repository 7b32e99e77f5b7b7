"""transformers' own GLM-4.1V inputs for a prompt with images: the reference the services are
checked against (what Glm4vProcessor does, without its video processor, which needs
torchvision)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer


def reference_inputs(
    checkpoint: Path, messages: list[dict[str, Any]], images: list[bytes]
) -> dict[str, torch.Tensor]:
    """input_ids with each image's marker expanded to its token count, pixel_values,
    image_grid_thw and mm_token_type_ids (which generate() needs to use 3-D positions)."""
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    config = AutoConfig.from_pretrained(checkpoint)
    processor = AutoImageProcessor.from_pretrained(checkpoint)
    pictures = [Image.open(io.BytesIO(data)).convert("RGB") for data in images]
    vision = processor(images=pictures, return_tensors="pt")
    merge = processor.merge_size**2
    image_token = tokenizer.convert_ids_to_tokens(config.image_token_id)
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    pieces = text.split(image_token)
    assert len(pieces) == len(images) + 1, "one image marker per image"
    expanded = pieces[0]
    for grid, piece in zip(vision["image_grid_thw"], pieces[1:], strict=True):
        expanded += image_token * (int(grid.prod()) // merge) + piece
    input_ids = tokenizer(expanded, return_tensors="pt").input_ids
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "pixel_values": vision["pixel_values"],
        "image_grid_thw": vision["image_grid_thw"],
        "mm_token_type_ids": (input_ids == config.image_token_id).int(),
    }
