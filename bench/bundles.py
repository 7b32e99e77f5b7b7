"""The bundle a benchmark or check runs on: the one given, or the default one built for it."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console

from bundle.build import build_bundle
from services.cli import main as autoglm


@contextmanager
def prepared_bundle(given: Path | None, console: Console) -> Iterator[Path]:
    """The given bundle, or the default one built and GPTQ-quantized in a temporary folder
    (as `make up` does), removed afterwards."""
    if given is not None:
        yield given
        return
    with tempfile.TemporaryDirectory(prefix="autoglm-bench-") as tmp:
        root = Path(tmp) / "default"
        console.print(f"building the default bundle in {root}")
        build_bundle(root, "default")
        if autoglm(["quantize", str(root), "--bits", "4", "--group-size", "128"]) != 0:
            raise RuntimeError(f"autoglm quantize {root} failed")
        yield root
