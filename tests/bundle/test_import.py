"""`autoglm bundle import`: a Hugging Face checkpoint served in place, or refused with a reason."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import Glm4Config, Glm4ForCausalLM

from bundle.build import build_tokenizer
from bundle.hf_import import ImportRefused, import_checkpoint
from bundle.layout import MANIFEST, Bundle
from services import cli
from tests.bundle.test_bundle import digest


@pytest.fixture
def checkpoint(glm4v_checkpoint: Path, tmp_path: Path) -> Path:
    """A copy of the tiny GLM-4.1V checkpoint that a test may import into or break."""
    return Path(shutil.copytree(glm4v_checkpoint, tmp_path / "GLM-4.1V"))


def edit_json(path: Path, **changes: object) -> None:
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


def test_import_writes_only_bundle_json_beside_the_shards(checkpoint: Path) -> None:
    before = digest(checkpoint)
    assert cli.main(["bundle", "import", str(checkpoint)]) == 0
    after = digest(checkpoint)
    assert after.keys() - before.keys() == {MANIFEST}
    assert {k: after[k] for k in before} == before  # nothing rewritten, nothing copied
    assert json.loads((checkpoint / MANIFEST).read_text()) == {
        "format_version": 1,
        "served_model_name": "autoglm-phone-9b",
        "architecture": "glm4v",
        "parts": {"decoder": ".", "vision": ".", "fusion": "."},
    }
    bundle = Bundle.load(checkpoint)
    assert bundle.modalities == ("text", "image")
    assert bundle.decoder == bundle.vision == bundle.fusion == checkpoint / "."
    assert not bundle.has("audio")
    with pytest.raises(LookupError, match="no audio part"):
        _ = bundle.audio


def test_a_bundle_folder_holding_the_checkpoint_moves_as_one(checkpoint: Path) -> None:
    root = checkpoint.parent
    bundle = import_checkpoint(checkpoint, root, served_model_name="phone")
    assert bundle.parts == {"decoder": "GLM-4.1V", "vision": "GLM-4.1V", "fusion": "GLM-4.1V"}
    moved = root.rename(root.parent / "elsewhere")
    loaded = Bundle.load(moved)
    assert loaded.served_model_name == "phone"
    assert (loaded.decoder / "config.json").is_file()
    assert not any(p.is_symlink() for p in moved.rglob("*"))


def test_a_bundle_folder_outside_the_checkpoint_is_refused(
    checkpoint: Path, tmp_path: Path
) -> None:
    with pytest.raises(ImportRefused, match="must be the bundle folder or inside it"):
        import_checkpoint(checkpoint, tmp_path / "bundles" / "phone")
    assert not (tmp_path / "bundles").exists()


REFUSALS = {
    "no_config": ("config.json", "no config.json"),
    "no_tokenizer": ("tokenizer.json", "no tokenizer.json"),
    "no_template": ("chat_template.jinja", "no chat template"),
    "no_processor": ("preprocessor_config.json", "no preprocessor_config.json"),
    "no_weights": ("model.safetensors", "no model.safetensors"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_missing_files_are_named(checkpoint: Path, case: str) -> None:
    name, message = REFUSALS[case]
    (checkpoint / name).unlink()
    with pytest.raises(ImportRefused, match=message):
        import_checkpoint(checkpoint)
    assert not (checkpoint / MANIFEST).exists()


def test_an_index_naming_a_missing_shard_is_refused(checkpoint: Path) -> None:
    (checkpoint / "model.safetensors").rename(checkpoint / "model-00001-of-00002.safetensors")
    names = ["model.visual.x", "model.language_model.x", "lm_head.weight"]
    weight_map = dict.fromkeys(names, "model-00001-of-00002.safetensors")
    weight_map["model.language_model.y"] = "model-00002-of-00002.safetensors"
    (checkpoint / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(ImportRefused, match=r"shards that are missing.*00002-of-00002"):
        import_checkpoint(checkpoint)


def test_unsupported_architectures_and_settings_are_named(checkpoint: Path) -> None:
    config = checkpoint / "config.json"
    original = json.loads(config.read_text())
    edit_json(config, architectures=["Qwen2VLForConditionalGeneration"])
    with pytest.raises(ImportRefused, match=r"unsupported architecture.*Qwen2VL"):
        import_checkpoint(checkpoint)
    text = original["text_config"]
    rope = text["rope_parameters"] | {"mrope_section": [8, 12, 12]}
    edit_json(config, architectures=original["architectures"], text_config=text | {
        "rope_parameters": rope})  # fmt: skip
    with pytest.raises(ImportRefused, match=r"mrope_section \[8, 12, 12\] must be 3 numbers"):
        import_checkpoint(checkpoint)
    edit_json(config, text_config=text, image_token_id=99999)
    with pytest.raises(ImportRefused, match="image_token_id 99999 is not in its tokenizer"):
        import_checkpoint(checkpoint)
    edit_json(config, image_token_id=original["image_token_id"], quantization_config={"bits": 4})
    with pytest.raises(ImportRefused, match="already quantized"):
        import_checkpoint(checkpoint)


def test_a_processor_that_disagrees_with_the_tower_is_refused(checkpoint: Path) -> None:
    edit_json(checkpoint / "preprocessor_config.json", patch_size=16)
    with pytest.raises(ImportRefused, match="patch_size 16 but the tower has 14"):
        import_checkpoint(checkpoint)


def test_refusal_is_exit_code_2_with_the_reason(checkpoint: Path, capsys) -> None:
    (checkpoint / "tokenizer.json").unlink()
    assert cli.main(["bundle", "import", str(checkpoint)]) == 2
    assert "no tokenizer.json" in capsys.readouterr().err


def test_a_text_only_glm4_checkpoint_imports_as_a_decoder(tmp_path: Path) -> None:
    tokenizer = build_tokenizer()
    config = Glm4Config(
        vocab_size=4096, hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, head_dim=32, intermediate_size=128, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    Glm4ForCausalLM(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    bundle = import_checkpoint(tmp_path)
    assert (bundle.architecture, bundle.parts) == ("glm4", {"decoder": "."})
    assert Bundle.load(tmp_path).modalities == ("text",)


def test_init_phone_preset_takes_the_import_path(tmp_path: Path) -> None:
    # glm4v-tiny is the phone preset's small twin: the same builder and import, seconds not minutes.
    assert cli.main(["bundle", "init", str(tmp_path / "b"), "--preset", "glm4v-tiny"]) == 0
    bundle = Bundle.load(tmp_path / "b")
    assert (bundle.architecture, bundle.parts["vision"]) == ("glm4v", ".")
