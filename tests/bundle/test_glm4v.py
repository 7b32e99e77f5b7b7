"""GLM-4.1V test checkpoints: the real checkpoint's files and layout, other token ids."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoTokenizer,
    GenerationConfig,
    Glm4vForConditionalGeneration,
)
from transformers.models.glm4v.image_processing_pil_glm4v import smart_resize

from bundle.glm4v import PRESETS, _config, build_glm4v_checkpoint, build_tokenizer
from testkit.media import image_bytes
from tests.bundle.test_bundle import digest
from tests.glm4v import reference_inputs

FILES = {
    "config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
    "tokenizer_config.json", "chat_template.jinja", "preprocessor_config.json",
}  # fmt: skip


def test_building_twice_gives_identical_files(glm4v_checkpoint: Path, tmp_path: Path) -> None:
    assert set(digest(glm4v_checkpoint)) == FILES
    assert digest(build_glm4v_checkpoint(tmp_path / "again", "tiny")) == digest(glm4v_checkpoint)


def test_another_seed_gives_other_weights(glm4v_checkpoint: Path, tmp_path: Path) -> None:
    other = digest(build_glm4v_checkpoint(tmp_path / "seed1", "tiny", seed=1))
    assert other["model.safetensors"] != digest(glm4v_checkpoint)["model.safetensors"]
    assert other["config.json"] == digest(glm4v_checkpoint)["config.json"]


def test_token_ids_in_the_config_are_the_tokenizers(glm4v_checkpoint: Path) -> None:
    config = AutoConfig.from_pretrained(glm4v_checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(glm4v_checkpoint)
    assert config.architectures == ["Glm4vForConditionalGeneration"]
    ids = tokenizer.convert_tokens_to_ids
    assert config.image_token_id == ids("<|image|>")
    assert config.image_start_token_id == ids("<|begin_of_image|>")
    assert config.image_end_token_id == ids("<|end_of_image|>")
    assert config.video_token_id == ids("<|video|>")
    eos = ids(["<|endoftext|>", "<|user|>", "<|observation|>", "</answer>"])
    assert GenerationConfig.from_pretrained(glm4v_checkpoint).eos_token_id == eos
    assert config.text_config.eos_token_id == eos
    assert config.image_token_id != 151343  # not the real model's ids: nothing may assume them
    # not padded, so every id the model can sample is a token with its own bytes
    assert config.text_config.vocab_size == len(tokenizer)


def test_markers_are_special_and_answer_tags_stay_in_the_text(glm4v_checkpoint: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(glm4v_checkpoint)
    tags = ("<think>", "</think>", "<answer>", "</answer>")
    for token in ("<|begin_of_image|>", "<|image|>", *tags):
        assert len(tokenizer(token, add_special_tokens=False).input_ids) == 1, token
    literal = tokenizer("<|image|>", add_special_tokens=False, split_special_tokens=True)
    assert len(literal.input_ids) > 1
    ids = tokenizer("<think>a</think><answer>do()</answer><|user|>").input_ids
    shown = tokenizer.decode(ids, skip_special_tokens=True)
    assert shown == "<think>a</think><answer>do()</answer>"


def test_chat_template_is_glm_4_1v_thinking(glm4v_checkpoint: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(glm4v_checkpoint)
    messages = [
        {"role": "system", "content": "You are a phone agent."},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Open Maps"}]},
        {"role": "assistant", "content": '<think>tap</think><answer>do(action="Tap")</answer>'},
        {"role": "user", "content": "next"},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "[gMASK]<sop><|system|>\nYou are a phone agent.<|user|>\n"
        "<|begin_of_image|><|image|><|end_of_image|>Open Maps<|assistant|>\n"
        '<think>tap</think><answer>do(action="Tap")</answer><|user|>\nnext<|assistant|>\n'
    )


def test_image_processor_has_the_real_patch_merge_and_pixel_settings(
    glm4v_checkpoint: Path,
) -> None:
    processor = AutoImageProcessor.from_pretrained(glm4v_checkpoint)
    assert type(processor).__name__.startswith("Glm4vImageProcessor")
    assert (processor.patch_size, processor.temporal_patch_size, processor.merge_size) == (14, 2, 2)
    assert processor.size["shortest_edge"] == 12544
    assert processor.size["longest_edge"] == PRESETS["tiny"].max_pixels
    assert PRESETS["phone"].max_pixels == 47040000  # GLM-4.1V's preprocessor_config.json
    assert processor.image_mean == pytest.approx([0.48145466, 0.4578275, 0.40821073])


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_fit_transformers_mrope(preset: str) -> None:
    config = _config(PRESETS[preset], build_tokenizer())
    text = config.text_config
    head_dim = text.hidden_size // text.num_attention_heads
    rope = text.rope_parameters
    assert sum(rope["mrope_section"]) == head_dim * rope["partial_rotary_factor"] / 2
    with torch.device("meta"):
        model = Glm4vForConditionalGeneration(config)
    language = sum(p.numel() for p in model.model.language_model.parameters())
    if preset == "phone":
        assert head_dim == 128 and rope["mrope_section"] == [8, 12, 12]
        assert 1.3e8 < language + model.lm_head.weight.numel() < 1.7e8
        assert config.vision_config.patch_size == 14
        assert config.vision_config.temporal_patch_size == 2
        assert config.vision_config.spatial_merge_size == 2
    else:
        assert sum(p.numel() for p in model.parameters()) < 5e6


def test_a_phone_screenshot_is_3354_tokens_at_the_phone_presets_bounds() -> None:
    spec = PRESETS["phone"]
    height, width = smart_resize(2, 2400, 1080, 2, 28, 12544, spec.max_pixels)
    assert (height // 14) * (width // 14) // 4 == 3354


def test_3d_positions_change_the_first_greedy_tokens(glm4v_checkpoint: Path) -> None:
    """The tiny weights are large enough that a server using 1-D positions would be caught."""
    model = Glm4vForConditionalGeneration.from_pretrained(glm4v_checkpoint).eval()
    question = {"type": "text", "text": "What is on the screen?"}
    messages = [{"role": "user", "content": [{"type": "image"}, question]}]
    inputs = reference_inputs(glm4v_checkpoint, messages, [image_bytes(size=(96, 80))])
    one_d = {k: v for k, v in inputs.items() if k != "mm_token_type_ids"}
    with torch.no_grad():
        mrope = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        flat = model.generate(**one_d, max_new_tokens=4, do_sample=False)
    assert mrope[0, -4] != flat[0, -4]
