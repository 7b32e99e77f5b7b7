"""A GLM-4.1V checkpoint with seeded random weights, in the real checkpoint's layout.

AutoGLM-Phone-9B is a `Glm4vForConditionalGeneration`; no hub is reachable here, so the import,
the services and the parity test run on checkpoints built by `build_glm4v_checkpoint`: the same
files as the real one (config.json with text_config/vision_config and the image token ids,
safetensors — sharded with an index for the "phone" preset —, tokenizer.json,
chat_template.jinja, preprocessor_config.json, generation_config.json) at small sizes. Special
tokens get this repo's tokenizer ids, deliberately not the real model's, so nothing downstream
can work by hard-coding GLM's ids.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import (
    GenerationConfig,
    Glm4vConfig,
    Glm4vForConditionalGeneration,
    Glm4vImageProcessorPil,
    PreTrainedTokenizerFast,
)

from bundle.build import TOKENIZER_FILE
from bundle.special_tokens import (
    BEGIN_OF_IMAGE,
    END_OF_IMAGE,
    END_THINK,
    ENDOFTEXT,
    IMAGE,
    OBSERVATION,
    THINK,
    USER,
)

HERE = Path(__file__).parent
# GLM-4.1V-9B-Thinking's chat_template.jinja, verbatim (zai-org/GLM-4.1V-9B-Thinking, revision
# 3c1471e5): role tags, one <|begin_of_image|><|image|><|end_of_image|> per image part.
CHAT_TEMPLATE_FILE = HERE / "glm4v_chat_template.jinja"

BEGIN_OF_VIDEO, VIDEO, END_OF_VIDEO = "<|begin_of_video|>", "<|video|>", "<|end_of_video|>"
ANSWER, END_ANSWER = "<answer>", "</answer>"
# Added after the shipped tokenizer's own special tokens. The markers are special (never shown,
# never parsed from user text); <think>/<answer> and their ends are plain added tokens, so they
# stay in the decoded text where AutoGLM's client looks for them.
ADDED_SPECIAL = (BEGIN_OF_VIDEO, VIDEO, END_OF_VIDEO)
ADDED_TEXT = (ANSWER, END_ANSWER)
TEXT_TOKENS = (THINK, END_THINK, ANSWER, END_ANSWER)
# The real generation_config.json stops at <|endoftext|>, <|user|>, <|observation|>, </answer>.
EOS_TOKENS = (ENDOFTEXT, USER, OBSERVATION, END_ANSWER)

# The image processor's real settings (GLM-4.1V's preprocessor_config.json).
PATCH_SIZE, TEMPORAL_PATCH_SIZE, MERGE_SIZE = 14, 2, 2
MIN_PIXELS, MAX_PIXELS = 12544, 47040000
REAL_MROPE_SECTION = (8, 12, 12)  # sums to head_dim 128 * partial_rotary_factor 0.5 / 2


@dataclasses.dataclass(frozen=True)
class Glm4vPreset:
    text: dict[str, Any]
    vision: dict[str, Any]
    mrope_section: tuple[int, int, int]
    initializer_range: float
    max_pixels: int
    dtype: torch.dtype
    max_shard_size: str | None  # None: one model.safetensors
    # The real embedding is padded past the tokenizer (151552 rows); the tiny one is not, so
    # every id a random model samples is a token a client can tell apart by its bytes.
    vocab_multiple: int

    def __post_init__(self) -> None:
        head_dim = self.text["hidden_size"] // self.text["num_attention_heads"]
        # Glm4vTextRotaryEmbedding splits head_dim * 0.5 / 2 frequencies into (t, h, w) sections.
        if sum(self.mrope_section) * 4 != head_dim:
            raise ValueError(f"mrope_section {self.mrope_section} does not fit head_dim {head_dim}")
        if self.vision["out_hidden_size"] != self.text["hidden_size"]:
            raise ValueError("the merger must project to the text width")


PRESETS: dict[str, Glm4vPreset] = {
    # ~1.6M parameters; weights large enough (std 0.1) that 1-D instead of 3-D positions change
    # the first greedy tokens, so a parity test can tell them apart. Images stay small.
    "tiny": Glm4vPreset(
        text=dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, intermediate_size=256, max_position_embeddings=8192),
        vision=dict(depth=2, hidden_size=64, num_heads=2, out_hidden_size=128,
                    intermediate_size=256),
        mrope_section=(2, 3, 3), initializer_range=0.1, max_pixels=28 * 28 * 256,
        dtype=torch.float32, max_shard_size=None, vocab_multiple=1,
    ),
    # ~150M text model with the real head_dim 128 and mRoPE sections, and a tower with the real
    # patch/merge/pixel settings (real token counts: a 1080x2400 screenshot is 3,354) but only
    # 2 layers of width 192 (3 heads of 64): attention over a screenshot's 13,416 patches is
    # ~0.28 TFLOP, a quarter of a 4 x 384 tower's, so a CPU benchmark encodes one per turn.
    "phone": Glm4vPreset(
        text=dict(hidden_size=1024, num_hidden_layers=12, num_attention_heads=8,
                  num_key_value_heads=2, intermediate_size=3072, max_position_embeddings=32768),
        vision=dict(depth=2, hidden_size=192, num_heads=3, out_hidden_size=1024,
                    intermediate_size=768),
        mrope_section=REAL_MROPE_SECTION, initializer_range=0.02, max_pixels=MAX_PIXELS,
        dtype=torch.bfloat16, max_shard_size="100MB", vocab_multiple=128,
    ),
}  # fmt: skip


def build_tokenizer(max_length: int = 8192) -> PreTrainedTokenizerFast:
    """The shipped byte-level BPE with GLM-4.1V's markers and answer tags added after it."""
    spec = json.loads(TOKENIZER_FILE.read_text())
    next_id = 1 + max(
        max(spec["model"]["vocab"].values()), *(t["id"] for t in spec["added_tokens"])
    )
    for token in spec["added_tokens"]:
        token["special"] = token["content"] not in TEXT_TOKENS
    for offset, content in enumerate(ADDED_SPECIAL + ADDED_TEXT):
        spec["added_tokens"].append(
            dict(id=next_id + offset, content=content, single_word=False, lstrip=False,
                 rstrip=False, normalized=False, special=content not in TEXT_TOKENS)
        )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tokenizer.json"
        path.write_text(json.dumps(spec))
        return PreTrainedTokenizerFast(
            tokenizer_file=str(path),
            eos_token=ENDOFTEXT,
            pad_token=ENDOFTEXT,
            chat_template=CHAT_TEMPLATE_FILE.read_text(),
            model_max_length=max_length,
        )


def _config(preset: Glm4vPreset, tokenizer: PreTrainedTokenizerFast) -> Glm4vConfig:
    ids = tokenizer.get_vocab()
    eos = [ids[t] for t in EOS_TOKENS]
    vocab_size = preset.vocab_multiple * math.ceil(len(tokenizer) / preset.vocab_multiple)
    text = dict(
        preset.text,
        vocab_size=vocab_size,
        initializer_range=preset.initializer_range,
        rms_norm_eps=1e-5,
        attention_bias=True,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id,
        rope_parameters=dict(
            rope_type="default",
            rope_theta=10000.0,
            partial_rotary_factor=0.5,
            mrope_section=list(preset.mrope_section),
        ),
    )
    vision = dict(
        preset.vision,
        patch_size=PATCH_SIZE,
        temporal_patch_size=TEMPORAL_PATCH_SIZE,
        spatial_merge_size=MERGE_SIZE,
        image_size=336,
        initializer_range=preset.initializer_range,
    )
    return Glm4vConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids[IMAGE],
        image_start_token_id=ids[BEGIN_OF_IMAGE],
        image_end_token_id=ids[END_OF_IMAGE],
        video_token_id=ids[VIDEO],
        video_start_token_id=ids[BEGIN_OF_VIDEO],
        video_end_token_id=ids[END_OF_VIDEO],
        tie_word_embeddings=False,
    )


def build_glm4v_checkpoint(out_dir: Path | str, preset: str = "tiny", seed: int = 0) -> Path:
    """Write a GLM-4.1V checkpoint folder at out_dir; the same preset and seed give the same
    bytes."""
    if preset not in PRESETS:
        raise ValueError(f"unknown GLM-4.1V preset {preset!r}; choose from {tuple(PRESETS)}")
    spec = PRESETS[preset]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(spec.text["max_position_embeddings"])
    config = _config(spec, tokenizer)
    torch.manual_seed(seed)
    model = Glm4vForConditionalGeneration(config).eval()
    torch.nn.Module.to(model, spec.dtype)
    shard = {"max_shard_size": spec.max_shard_size} if spec.max_shard_size else {}
    model.save_pretrained(out, **shard)
    text = config.get_text_config()
    GenerationConfig(
        eos_token_id=text.eos_token_id, pad_token_id=text.pad_token_id, do_sample=False
    ).save_pretrained(out)
    tokenizer.save_pretrained(out)
    # Its other defaults (patch 14, temporal patch 2, merge 2, CLIP mean/std) are the real ones.
    Glm4vImageProcessorPil(
        size={"shortest_edge": MIN_PIXELS, "longest_edge": spec.max_pixels}
    ).save_pretrained(out)
    return out
