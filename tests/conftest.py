"""Session fixtures: the default bundle, built once, and the whole stack as real processes."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from bundle.build import build_bundle
from bundle.layout import Bundle
from services import cli
from tests.support import ServiceProcess, spawn


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default bundle as `make up` builds it: FP weights plus the GPTQ 4-bit decoder."""
    root = tmp_path_factory.mktemp("bundle") / "default"
    build_bundle(root)
    assert cli.main(["quantize", str(root), "--bits", "4", "--group-size", "128"]) == 0
    return root


@pytest.fixture(scope="session")
def bundle(bundle_dir: Path) -> Bundle:
    return Bundle.load(bundle_dir)


@dataclasses.dataclass
class Stack:
    vision: ServiceProcess
    audio: ServiceProcess
    decoder: ServiceProcess
    gateway: ServiceProcess

    @property
    def base_url(self) -> str:
        return f"{self.gateway.url}/v1"

    @property
    def processes(self) -> tuple[ServiceProcess, ...]:
        return (self.vision, self.audio, self.decoder, self.gateway)


@pytest.fixture(scope="session")
def stack(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Vision, audio, decoder and gateway on free loopback ports, started in parallel."""
    logs = tmp_path_factory.mktemp("logs")
    encoders_and_decoder = [
        spawn("vision", bundle_dir, logs),
        spawn("audio", bundle_dir, logs),
        spawn("decoder", bundle_dir, logs),
    ]
    vision, audio, decoder = encoders_and_decoder
    gateway = spawn(
        "gateway",
        bundle_dir,
        logs,
        args=[
            "--vision-target", vision.target,
            "--audio-target", audio.target,
            "--decoder-target", decoder.target,
        ],
    )  # fmt: skip
    started = Stack(vision, audio, decoder, gateway)
    try:
        for process in started.processes:
            process.wait_ready()
        yield started
    finally:
        for process in reversed(started.processes):
            process.stop()
