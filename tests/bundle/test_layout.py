"""bundle.json: the default bundle's manifest unchanged, optional parts, paths kept inside."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bundle.layout import MANIFEST, Bundle

DEFAULT_PARTS = {p: p for p in ("decoder", "vision", "audio", "fusion")}


def write(root: Path, **manifest: object) -> None:
    root.mkdir(parents=True, exist_ok=True)
    body = {"format_version": 1, "served_model_name": "m"} | manifest
    (root / MANIFEST).write_text(json.dumps(body))


def test_the_default_manifest_keeps_its_format(tmp_path: Path) -> None:
    Bundle(tmp_path, "autoglm-phone-9b", DEFAULT_PARTS).save()
    assert json.loads((tmp_path / MANIFEST).read_text()) == {
        "format_version": 1, "served_model_name": "autoglm-phone-9b", "parts": DEFAULT_PARTS,
    }  # fmt: skip
    bundle = Bundle.load(tmp_path)
    assert bundle.architecture == "default"
    assert bundle.modalities == ("text", "image", "audio")


def test_the_default_bundle_needs_all_four_parts(tmp_path: Path) -> None:
    write(tmp_path, parts={"decoder": "decoder"})
    with pytest.raises(ValueError, match=r"default bundle needs the parts \['vision', 'audio'"):
        Bundle.load(tmp_path)


def test_glm4v_bundles_have_no_audio(tmp_path: Path) -> None:
    write(tmp_path, architecture="glm4v", parts={"decoder": ".", "vision": ".", "fusion": "."})
    bundle = Bundle.load(tmp_path)
    assert bundle.modalities == ("text", "image")
    with pytest.raises(LookupError, match="has no audio part"):
        _ = bundle.audio


@pytest.mark.parametrize("path", ["/models/phone", "../phone", "a/../../phone"])
def test_part_paths_stay_inside_the_bundle(tmp_path: Path, path: str) -> None:
    write(tmp_path / "b", architecture="glm4", parts={"decoder": path})
    with pytest.raises(ValueError, match="decoder"):
        Bundle.load(tmp_path / "b")


def test_a_symlink_out_of_the_bundle_is_refused(tmp_path: Path) -> None:
    (tmp_path / "outside").mkdir()
    write(tmp_path / "b", architecture="glm4", parts={"decoder": "link"})
    (tmp_path / "b" / "link").symlink_to(tmp_path / "outside")
    with pytest.raises(ValueError, match="leads out of the bundle folder"):
        Bundle.load(tmp_path / "b")


def test_unknown_architectures_and_parts_are_named(tmp_path: Path) -> None:
    write(tmp_path, architecture="llava", parts={"decoder": "."})
    with pytest.raises(ValueError, match="unknown bundle architecture 'llava'"):
        Bundle.load(tmp_path)
    write(tmp_path, architecture="glm4", parts={"decoder": ".", "speech": "."})
    with pytest.raises(ValueError, match=r"unknown bundle parts \['speech'\]"):
        Bundle.load(tmp_path)
