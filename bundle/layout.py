"""The model bundle: a directory with bundle.json naming its parts, each a standard Hugging Face
folder, so a real checkpoint can take any part's place."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

MANIFEST = "bundle.json"
FORMAT_VERSION = 1
SERVED_MODEL_NAME = "autoglm-phone-9b"
PARTS = ("decoder", "vision", "audio", "fusion")
GPTQ_FOLDER = "decoder-gptq"


@dataclasses.dataclass(frozen=True)
class Bundle:
    root: Path
    served_model_name: str
    parts: dict[str, str]

    @property
    def decoder(self) -> Path:
        """Glm4ForCausalLM: config, safetensors, tokenizer, chat template, generation config."""
        return self.root / self.parts["decoder"]

    @property
    def decoder_gptq(self) -> Path:
        """The GPTQ checkpoint `autoglm quantize` writes beside the FP decoder (may not exist)."""
        return self.root / self.parts.get("decoder_gptq", GPTQ_FOLDER)

    @property
    def vision(self) -> Path:
        return self.root / self.parts["vision"]

    @property
    def audio(self) -> Path:
        return self.root / self.parts["audio"]

    @property
    def fusion(self) -> Path:
        return self.root / self.parts["fusion"]

    @classmethod
    def load(cls, root: Path | str) -> Bundle:
        root = Path(root)
        manifest = root / MANIFEST
        if not manifest.is_file():
            raise FileNotFoundError(
                f"no model bundle at {root} ({MANIFEST} missing); "
                f"build the default one with `autoglm bundle init {root}`"
            )
        data = json.loads(manifest.read_text())
        if data.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{manifest}: unsupported format_version {data.get('format_version')}")
        parts = dict(data["parts"])
        missing = [p for p in PARTS if p not in parts]
        if missing:
            raise ValueError(f"{manifest}: parts {missing} are not named")
        return cls(root=root, served_model_name=data["served_model_name"], parts=parts)

    def save(self) -> None:
        manifest = {
            "format_version": FORMAT_VERSION,
            "served_model_name": self.served_model_name,
            "parts": self.parts,
        }
        (self.root / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
