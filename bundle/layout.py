"""The model bundle: a directory with bundle.json naming its parts, each a standard Hugging Face
folder, so a real checkpoint can take any part's place.

Two kinds of bundle:
- ``default``: built by `autoglm bundle init` — decoder/, vision/, audio/, fusion/ folders, each
  its own model (Glm4ForCausalLM, SigLIP, Wav2Vec2, the cross-modal fusion).
- ``glm4v`` (and ``glm4``, text only): written by `autoglm bundle import` beside a Hugging Face
  checkpoint, whose one folder serves as several parts: the decoder reads
  ``model.language_model.*`` and ``lm_head.*``, the vision service ``model.visual.*`` and the
  fusion stage the projector in it. Parts that the model lacks (audio, cross-modal attention)
  are absent.

Every part path is relative to the bundle folder and stays inside it, so the folder can be moved
or mounted into a container as it is.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

MANIFEST = "bundle.json"
FORMAT_VERSION = 1
SERVED_MODEL_NAME = "autoglm-phone-9b"
PARTS = ("decoder", "vision", "audio", "fusion")
GPTQ_FOLDER = "decoder-gptq"
DEFAULT, GLM4V, GLM4 = "default", "glm4v", "glm4"
ARCHITECTURES = (DEFAULT, GLM4V, GLM4)
# What each kind must have; the other parts are optional.
REQUIRED_PARTS = {DEFAULT: PARTS, GLM4V: ("decoder", "vision", "fusion"), GLM4: ("decoder",)}
MODALITY_OF_PART = {"vision": "image", "audio": "audio"}


@dataclasses.dataclass(frozen=True)
class Bundle:
    root: Path
    served_model_name: str
    parts: dict[str, str]
    architecture: str = DEFAULT

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"unknown bundle architecture {self.architecture!r}; one of {ARCHITECTURES}"
            )
        unknown = sorted(set(self.parts) - {*PARTS, "decoder_gptq"})
        if unknown:
            raise ValueError(f"unknown bundle parts {unknown}; parts are {PARTS}")
        missing = [p for p in REQUIRED_PARTS[self.architecture] if p not in self.parts]
        if missing:
            raise ValueError(f"a {self.architecture} bundle needs the parts {missing}")

    @property
    def modalities(self) -> tuple[str, ...]:
        """What the model takes: text, plus image and audio when it has their encoders."""
        return ("text", *(MODALITY_OF_PART[p] for p in ("vision", "audio") if p in self.parts))

    def has(self, part: str) -> bool:
        return part in self.parts

    def part(self, name: str) -> Path:
        if name not in self.parts:
            raise LookupError(f"the bundle at {self.root} has no {name} part")
        return self.root / self.parts[name]

    @property
    def decoder(self) -> Path:
        """The decoder's checkpoint folder: Glm4ForCausalLM, or a GLM-4.1V checkpoint whose
        text model it serves; tokenizer, chat template and generation config live beside."""
        return self.part("decoder")

    @property
    def decoder_gptq(self) -> Path:
        """The GPTQ checkpoint `autoglm quantize` writes beside the FP decoder (may not exist)."""
        return self.root / self.parts.get("decoder_gptq", GPTQ_FOLDER)

    @property
    def vision(self) -> Path:
        return self.part("vision")

    @property
    def audio(self) -> Path:
        return self.part("audio")

    @property
    def fusion(self) -> Path:
        return self.part("fusion")

    @classmethod
    def load(cls, root: Path | str) -> Bundle:
        root = Path(root)
        manifest = root / MANIFEST
        if not manifest.is_file():
            raise FileNotFoundError(
                f"no model bundle at {root} ({MANIFEST} missing); build the default one with "
                f"`autoglm bundle init {root}` or import a checkpoint with "
                f"`autoglm bundle import {root}`"
            )
        data = json.loads(manifest.read_text())
        if data.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{manifest}: unsupported format_version {data.get('format_version')}")
        try:
            bundle = cls(
                root=root,
                served_model_name=data["served_model_name"],
                parts=dict(data["parts"]),
                architecture=data.get("architecture", DEFAULT),
            )
            for name, relative in bundle.parts.items():
                inside_root(root, relative, f"part {name}")
        except ValueError as exc:
            raise ValueError(f"{manifest}: {exc}") from None
        return bundle

    def save(self) -> None:
        manifest: dict[str, object] = {
            "format_version": FORMAT_VERSION,
            "served_model_name": self.served_model_name,
        }
        if self.architecture != DEFAULT:  # absent means default: older manifests stay valid
            manifest["architecture"] = self.architecture
        manifest["parts"] = self.parts
        (self.root / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def inside_root(root: Path, relative: str, what: str) -> Path:
    """root / relative, refused when it is absolute or leads out of root (also by a symlink)."""
    if Path(relative).is_absolute():
        raise ValueError(f"{what}: {relative!r} must be a path relative to the bundle folder")
    resolved_root = root.resolve()
    target = (root / relative).resolve()
    if target != resolved_root and resolved_root not in target.parents:
        raise ValueError(f"{what}: {relative!r} leads out of the bundle folder {root}")
    return target
