"""transformers' own GLM-4.1V inputs for a prompt with images: the reference the services are
checked against (what Glm4vProcessor does, without its video processor, which needs
torchvision)."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer

from testkit.media import image_bytes

SCREEN, ICON = image_bytes(size=(224, 308), seed=1), image_bytes(size=(120, 60), seed=2)


def image_part(data: bytes) -> dict[str, Any]:
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    return {"type": "image_url", "image_url": {"url": url}}


# OpenAI chat messages and their images: one image; two images of different sizes across turns.
CONVERSATIONS: dict[str, tuple[list[dict[str, Any]], list[bytes]]] = {
    "one image": (
        [
            {"role": "system", "content": "You are a phone agent."},
            {"role": "user", "content": [image_part(SCREEN), {"type": "text", "text": "Maps"}]},
        ],
        [SCREEN],
    ),
    "two images of different sizes": (
        [
            {"role": "user", "content": [{"type": "text", "text": "Step 1"}, image_part(SCREEN)]},
            {"role": "assistant", "content": "<think>tap</think><answer>do()</answer>"},
            {"role": "user", "content": [image_part(ICON), {"type": "text", "text": "and now?"}]},
        ],
        [SCREEN, ICON],
    ),
}


def as_template_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What transformers' processor users pass: {"type": "image"} parts."""
    return [
        m | {"content": [p if p["type"] == "text" else {"type": "image"} for p in m["content"]]}
        if isinstance(m["content"], list) else m
        for m in messages
    ]  # fmt: skip


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
