"""The gateway's settings: flags, AUTOGLM_GATEWAY_* variables, checks at start-up."""

from __future__ import annotations

import argparse

import pytest

from gateway.config import GatewayConfig
from services.common.config import add_config_args, config_from_args


def build(argv: list[str], environ: dict[str, str] | None = None) -> GatewayConfig:
    parser = argparse.ArgumentParser()
    add_config_args(parser, GatewayConfig)
    return config_from_args(GatewayConfig, parser.parse_args(argv), environ or {})


def test_defaults_are_safe() -> None:
    config = build([])
    assert config.port == 8000 and config.api_key == ""
    assert config.image_url_allowlist == ()  # the server fetches nothing unless told to
    assert not config.keep_reasoning_inline


def test_flags_beat_variables_beat_defaults() -> None:
    environ = {
        "AUTOGLM_GATEWAY_IMAGE_URL_ALLOWLIST": "cdn.example.com, 127.0.0.1",
        "AUTOGLM_GATEWAY_KEEP_REASONING_INLINE": "true",
        "AUTOGLM_GATEWAY_DECODER_TARGET": "dns:///decoder:50053",
    }
    config = build(["--decoder-target", "10.0.0.5:50053"], environ)
    assert config.image_url_allowlist == ("cdn.example.com", "127.0.0.1")
    assert config.keep_reasoning_inline and config.decoder_target == "10.0.0.5:50053"
    assert config.max_body_bytes == 64 * 1024 * 1024


@pytest.mark.parametrize(
    "argv",
    [["--max-body-mb", "0"], ["--request-timeout-s", "-1"], ["--vision-target", ""],
     ["--max-images-per-request", "-1"]],
)  # fmt: skip
def test_bad_values_fail_at_start_up(argv: list[str]) -> None:
    with pytest.raises(ValueError):
        build(argv)
