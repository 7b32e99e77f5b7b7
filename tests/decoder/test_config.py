"""DecoderConfig: flags, AUTOGLM_DECODER_* variables, and checks at start-up."""

from __future__ import annotations

import argparse

import pytest

from services.common.config import add_config_args, config_from_args
from services.decoder.config import DecoderConfig


def parse(argv: list[str], environ: dict[str, str]) -> DecoderConfig:
    parser = argparse.ArgumentParser()
    add_config_args(parser, DecoderConfig)
    return config_from_args(DecoderConfig, parser.parse_args(argv), environ)


def test_flags_beat_variables_which_beat_defaults() -> None:
    config = parse(
        ["--quant", "none", "--max-running-requests", "4"],
        {"AUTOGLM_DECODER_QUANT": "nf4", "AUTOGLM_DECODER_MAX_TOTAL_TOKENS": "2048"},
    )
    assert (config.quantization, config.max_running_requests, config.max_total_tokens) == (
        "none",
        4,
        2048,
    )
    assert (config.port, config.dtype, config.prefill_chunk_tokens) == (50053, "auto", 512)


@pytest.mark.parametrize(
    "bad",
    [
        {"quantization": "awq"},
        {"dtype": "float64"},
        {"max_running_requests": 0},
        {"max_total_tokens": 8, "kv_block_size": 16},
        {"max_model_len": 4096, "max_total_tokens": 2048},
        {"prefill_chunk_tokens": 0},
        {"max_waiting_requests": 0},
        {"step_timeout_s": 0},
    ],
)
def test_impossible_settings_fail_at_start_up(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        DecoderConfig(**bad)  # type: ignore[arg-type]
