"""Configs: flags beat AUTOGLM_* variables beat dataclass defaults; bad values fail at start."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import ClassVar

import pytest

from services.common import env
from services.common.config import ServiceConfig, add_config_args, config_from_args


@dataclasses.dataclass(frozen=True)
class ExampleConfig(ServiceConfig):
    ENV_PREFIX: ClassVar[str] = "DECODER"
    port: int = 50053
    max_running_requests: int = 16
    ignore_eos_default: bool = False
    allowlist: tuple[str, ...] = ()


def build(argv: list[str], environ: dict[str, str]) -> ExampleConfig:
    parser = argparse.ArgumentParser()
    add_config_args(parser, ExampleConfig)
    return config_from_args(ExampleConfig, parser.parse_args(argv), environ)


def test_defaults_come_from_the_dataclass() -> None:
    config = build([], {})
    assert config == ExampleConfig()
    assert config.port == 50053 and config.bundle == Path("models/default")


def test_declared_variables_fill_unset_flags_and_flags_win() -> None:
    environ = {"AUTOGLM_DECODER_PORT": "6000", "AUTOGLM_BUNDLE": "/b", "AUTOGLM_HOST": "0.0.0.0"}
    config = build([], environ)
    assert (config.port, config.bundle, config.host) == (6000, Path("/b"), "0.0.0.0")
    assert build(["--port", "7000"], environ).port == 7000


def test_undeclared_variables_are_ignored() -> None:
    assert "AUTOGLM_DECODER_IGNORE_EOS_DEFAULT" not in env.VARIABLES
    assert build([], {"AUTOGLM_DECODER_IGNORE_EOS_DEFAULT": "1"}).ignore_eos_default is False


def test_booleans_and_lists_parse() -> None:
    config = build(["--ignore-eos-default", "--allowlist", "a.com, b.org"], {})
    assert config.ignore_eos_default is True and config.allowlist == ("a.com", "b.org")


@pytest.mark.parametrize(
    "argv", [["--port", "70000"], ["--device", "tpu"], ["--log-level", "loud"]]
)
def test_bad_values_fail_when_the_config_is_built(argv: list[str]) -> None:
    with pytest.raises(ValueError):
        build(argv, {})


def test_a_bad_variable_names_itself() -> None:
    with pytest.raises(ValueError, match="AUTOGLM_DECODER_PORT"):
        build([], {"AUTOGLM_DECODER_PORT": "many"})


def test_every_declared_variable_is_documented() -> None:
    for name, text in env.VARIABLES.items():
        assert name.startswith("AUTOGLM_") and text
