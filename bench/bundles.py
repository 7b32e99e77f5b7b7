"""The bundle a benchmark or check runs on: the one given, or the default one built for it."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console

from bundle.build import build_bundle
from bundle.init import build_glm4v_bundle
from bundle.presets import GLM4V_PRESETS
from services.cli import main as autoglm


@contextmanager
def prepared_bundle(
    given: Path | None, console: Console, preset: str = "default"
) -> Iterator[Path]:
    """The given bundle, or one built in a temporary folder and removed afterwards: the default
    one GPTQ-quantized (as `make up` does), or a GLM-4.1V preset (phone) as it is (`make up`
    serves an imported bundle unquantized until `autoglm quantize` is run)."""
    if given is not None:
        yield given
        return
    with tempfile.TemporaryDirectory(prefix="autoglm-bench-") as tmp:
        root = Path(tmp) / preset
        console.print(f"building the {preset} bundle in {root}")
        if preset in GLM4V_PRESETS:
            build_glm4v_bundle(root, GLM4V_PRESETS[preset])
            yield root
            return
        build_bundle(root, preset)
        if autoglm(["quantize", str(root), "--bits", "4", "--group-size", "128"]) != 0:
            raise RuntimeError(f"autoglm quantize {root} failed")
        yield root
