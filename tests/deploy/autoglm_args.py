"""Deployment files start `autoglm` with argument lists; check them with the real parser."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
from collections.abc import Mapping, Sequence

from services.cli import build_parser
from services.common import env
from services.common.config import ServiceConfig, config_from_args


def parse_autoglm(argv: Sequence[str], environ: Mapping[str, str]) -> argparse.Namespace:
    """Parse as `autoglm ARGV` would, and build the service config it names in ``environ``,
    so a bad flag, a bad value or a failed config check is an AssertionError saying which."""
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            args = build_parser().parse_args(list(argv))
    except SystemExit:
        raise AssertionError(f"`autoglm {' '.join(argv)}`: {errors.getvalue().strip()}") from None
    if hasattr(args, "target"):
        _config(argv, args, environ)
    return args


def service_config(argv: Sequence[str], environ: Mapping[str, str]) -> ServiceConfig:
    """The config `autoglm ARGV` runs with, given ``environ``."""
    args = parse_autoglm(argv, environ)
    assert hasattr(args, "target"), f"`autoglm {' '.join(argv)}` runs no service"
    return _config(argv, args, environ)


def _config(
    argv: Sequence[str], args: argparse.Namespace, environ: Mapping[str, str]
) -> ServiceConfig:
    try:
        module, _, name = args.target[0].partition(":")
        config_class = getattr(importlib.import_module(module), name)
        return config_from_args(config_class, args, environ)
    except ValueError as exc:
        raise AssertionError(f"`autoglm {' '.join(argv)}`: {exc}") from None


def undeclared_variables(environ: Mapping[str, str]) -> list[str]:
    """AUTOGLM_* names that no config reads (a typo would be silently ignored)."""
    return [name for name in environ if name.startswith("AUTOGLM_") and name not in env.VARIABLES]
