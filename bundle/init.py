"""`autoglm bundle init [PATH] [--preset NAME]`: build a bundle with seeded random weights.

The default and bench presets are the project's own bundle (bundle/build.py); phone and
glm4v-tiny are GLM-4.1V checkpoints (bundle/glm4v.py) imported as `autoglm bundle import` does,
so they take the same path as a real AutoGLM-Phone-9B download.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bundle import presets
from bundle.build import build_bundle, staged
from bundle.glm4v import build_glm4v_checkpoint
from bundle.hf_import import import_checkpoint
from bundle.layout import MANIFEST, Bundle


def build_glm4v_bundle(root: Path | str, preset: str) -> Bundle:
    """A GLM-4.1V checkpoint at root, imported in place (built beside it, then renamed)."""
    with staged(root) as staging:
        build_glm4v_checkpoint(staging, preset)
        import_checkpoint(staging)
    return Bundle.load(root)


def cli(args: argparse.Namespace) -> int:
    root = Path(args.path)
    if (root / MANIFEST).exists() and not args.force:
        print(f"bundle already at {root} (use --force to rebuild)")
        return 0
    if args.preset in presets.GLM4V_PRESETS:
        bundle = build_glm4v_bundle(root, presets.GLM4V_PRESETS[args.preset])
    else:
        bundle = build_bundle(root, args.preset)
    print(f"built the {args.preset} bundle at {bundle.root}")
    return 0
