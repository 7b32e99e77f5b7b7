"""Session fixtures: the default bundle, built once (and GPTQ-quantized once, for the tests that
serve it as `make up` does), and the whole stack as real processes.

Two tiers: a test that starts processes (a service, `autoglm up`, a server) or needs the
quantized bundle is marked ``stack``; `pytest -m "not stack"` (`make test-fast`) runs the rest,
which never pays for quantizing."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import torch

from bundle.build import build_bundle
from bundle.glm4v import build_glm4v_checkpoint
from bundle.layout import Bundle
from services import cli
from testkit.processes import ServiceProcess, spawn

# Fixtures that start processes (``started``: tests/encoders' service) or quantize for minutes:
# a test using one must be marked `stack` (checked below).
PROCESS_FIXTURES = frozenset({"stack", "quantized_bundle_dir", "started"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Keep the fast tier fast: a test that needs the stack or the quantized bundle and is not
    marked `stack` is a collection error, not a slow surprise in `make test-fast`."""
    unmarked = [
        item.nodeid
        for item in items
        if PROCESS_FIXTURES.intersection(getattr(item, "fixturenames", ()))
        and item.get_closest_marker("stack") is None
    ]
    if unmarked:
        raise pytest.UsageError("mark these tests @pytest.mark.stack:\n" + "\n".join(unmarked))


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """The in-process tests run thousands of tensor ops on tiny shapes: fanned out over torch's
    threads, each one costs more CPU than it saves, and on a busy machine the idle workers spin
    for a core they do not get (several times the CPU time). Processes the tests start keep
    their own setting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default bundle as `autoglm bundle init` builds it: FP weights, no GPTQ checkpoint."""
    root = tmp_path_factory.mktemp("bundle") / "default"
    build_bundle(root)
    return root


@pytest.fixture(scope="session")
def quantized_bundle_dir(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default bundle as `make up` serves it: a copy of ``bundle_dir`` plus the GPTQ 4-bit
    decoder (the decoder's default weights). Quantizing takes minutes on the CPU."""
    root = tmp_path_factory.mktemp("quantized-bundle") / "default"
    shutil.copytree(bundle_dir, root)
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


def start_stack(
    bundle_dir: Path,
    logs: Path,
    decoder_args: Sequence[str] = (),
    gateway_args: Sequence[str] = (),
) -> Stack:
    """Vision, audio, decoder and gateway on free loopback ports, started in parallel and
    ready; stop them with ``stop_stack``."""
    vision, audio, decoder = (
        spawn("vision", bundle_dir, logs),
        spawn("audio", bundle_dir, logs),
        spawn("decoder", bundle_dir, logs, args=decoder_args),
    )
    gateway = spawn(
        "gateway",
        bundle_dir,
        logs,
        args=[
            "--vision-target", vision.target,
            "--audio-target", audio.target,
            "--decoder-target", decoder.target,
            *gateway_args,
        ],
    )  # fmt: skip
    started = Stack(vision, audio, decoder, gateway)
    try:
        for process in started.processes:
            process.wait_ready()
    except BaseException:
        stop_stack(started)
        raise
    return started


def stop_stack(stack: Stack) -> None:
    for process in reversed(stack.processes):
        process.stop()


@pytest.fixture(scope="session")
def stack(quantized_bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The four services as `make up` serves the default bundle (the GPTQ decoder)."""
    started = start_stack(quantized_bundle_dir, tmp_path_factory.mktemp("logs"))
    try:
        yield started
    finally:
        stop_stack(started)


@pytest.fixture(scope="session")
def glm4v_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random GLM-4.1V checkpoint in the real layout (its own special-token ids)."""
    return build_glm4v_checkpoint(tmp_path_factory.mktemp("glm4v") / "tiny", "tiny")
