"""The default bundle: deterministic, standard Hugging Face folders, GLM-4 template and tokens."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from transformers import AutoConfig, AutoTokenizer, Glm4ForCausalLM

from bundle.build import build_bundle
from bundle.layout import Bundle
from bundle.special_tokens import SPECIAL_TOKENS


def digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_building_twice_gives_identical_files(tmp_path: Path) -> None:
    first = digest(build_bundle(tmp_path / "first").root)
    assert first == digest(build_bundle(tmp_path / "second").root)


def test_parts_are_standard_hugging_face_folders(bundle: Bundle) -> None:
    assert bundle.served_model_name == "autoglm-phone-9b"
    assert AutoConfig.from_pretrained(bundle.decoder).model_type == "glm4"
    assert AutoConfig.from_pretrained(bundle.vision).model_type == "siglip_vision_model"
    assert AutoConfig.from_pretrained(bundle.audio).model_type == "wav2vec2"
    model = Glm4ForCausalLM.from_pretrained(bundle.decoder)
    assert 1e6 < sum(p.numel() for p in model.parameters()) < 2e7


def test_tokenizer_has_glm4_special_tokens_and_eos(bundle: Bundle) -> None:
    tokenizer = AutoTokenizer.from_pretrained(bundle.decoder)
    for token in SPECIAL_TOKENS:
        ids = tokenizer(token, add_special_tokens=False).input_ids
        assert len(ids) == 1, token
    literal = tokenizer("<|image|>", add_special_tokens=False, split_special_tokens=True).input_ids
    assert len(literal) > 1
    config = AutoConfig.from_pretrained(bundle.decoder)
    assert set(config.eos_token_id) == set(
        tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|user|>", "<|observation|>"])
    )


@pytest.mark.parametrize(("thinking", "ending"), [(False, "<think></think>\n"), (True, "<think>")])
def test_chat_template_renders_glm4_turns_and_media_placeholders(
    bundle: Bundle, thinking: bool, ending: str
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(bundle.decoder)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [
            {"type": "text", "text": "What is here?"},
            {"type": "image_url", "image_url": {"url": "data:"}},
            {"type": "input_audio", "input_audio": {"data": "", "format": "wav"}},
        ]},
        {"role": "assistant", "content": None},
    ]  # fmt: skip
    text = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, enable_thinking=thinking
    )
    assert text == (
        "[gMASK]<sop><|system|>\nBe brief.<|user|>\nWhat is here?"
        "<|begin_of_image|><|image|><|end_of_image|><|begin_of_audio|><|audio|><|end_of_audio|>"
        "<|assistant|>\n<|assistant|>\n" + ending
    )


def test_missing_bundle_says_how_to_build_one(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="autoglm bundle init"):
        Bundle.load(tmp_path)
