"""`autoglm up`: the four services as one command. Its config, then the real thing: start the
stack on free loopback ports, wait for the URL, check health and the internal token, and take it
down three ways (a signal, bursts of signals, a dead child)."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from autoglm.v1 import decoder_pb2, decoder_pb2_grpc
from bundle.hf_import import import_checkpoint
from bundle.layout import Bundle
from services import health_probe
from services.cli import build_parser
from services.common.config import add_config_args, config_from_args
from services.health_probe import GRPC_SERVICE_NAMES
from services.launcher import (
    SERVICES,
    LauncherConfig,
    default_decoder_quantization,
    services_for,
)
from testkit.media import image_bytes
from testkit.processes import Up, alive, free_port
from tests.deploy.autoglm_args import parse_autoglm
from tests.glm4v import image_part

ROOT = Path(__file__).resolve().parents[1]
READY_TIMEOUT_S = 240.0
STOP_TIMEOUT_S = 60.0


def launcher_config(argv: list[str], environ: dict[str, str]) -> LauncherConfig:
    parser = argparse.ArgumentParser()
    add_config_args(parser, LauncherConfig)
    return config_from_args(LauncherConfig, parser.parse_args(argv), environ)


# The configuration.


def test_defaults_are_the_documented_ports() -> None:
    config = launcher_config([], {})
    assert [config.port_of(name) for name in SERVICES] == [50051, 50052, 50053, 8000]
    assert config.gateway_url == "http://127.0.0.1:8000"


def test_up_reads_the_same_variables_as_the_services() -> None:
    environ = {
        "AUTOGLM_BUNDLE": "/srv/bundle",
        "AUTOGLM_VISION_PORT": "6001",
        "AUTOGLM_GATEWAY_PORT": "9000",
        "AUTOGLM_DECODER_DEVICE": "cuda:1",
        "AUTOGLM_DEVICE": "cpu",
        "AUTOGLM_DECODER_QUANT": "none",
        "AUTOGLM_UP_STARTUP_TIMEOUT_S": "30",
    }
    config = launcher_config(["--audio-port", "6002"], environ)
    assert config.bundle == Path("/srv/bundle")
    assert (config.vision_port, config.audio_port, config.gateway_port) == (6001, 6002, 9000)
    assert [config.device_of(name) for name in SERVICES] == ["cpu", "cpu", "cuda:1", "cpu"]
    assert (config.decoder_quantization, config.startup_timeout_s) == ("none", 30.0)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--port", "8000"], "four ports"),
        (["--audio-port", "50051"], "four different ports"),
        (["--gateway-port", "70000"], "gateway_port"),
        (["--decoder-device", "gpu"], "device"),
        (["--startup-timeout-s", "0"], "positive"),
        (["--internal-tls-cert", "c.pem", "--internal-tls-key", "k.pem"], "loopback"),
    ],
)
def test_bad_settings_fail_before_anything_starts(argv: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        launcher_config(argv, {})


def test_each_child_gets_a_valid_command_with_the_stack_settings() -> None:
    config = LauncherConfig(
        bundle=Path("/b"),
        host="0.0.0.0",
        enable_reflection=True,
        internal_token_file=Path("/run/autoglm/token"),
        device="cpu",
        decoder_device="cuda:0",
        decoder_quantization="none",
        vision_port=7001,
        audio_port=7002,
        decoder_port=7003,
        gateway_port=7000,
    )
    parsed = {name: parse_autoglm(config.serve_args(name), {}) for name in SERVICES}
    for name, args in parsed.items():
        assert (args.service, args.bundle) == (name, Path("/b"))
        assert args.internal_token_file == Path("/run/autoglm/token")
        assert (args.port, args.device) == (config.port_of(name), config.device_of(name))
    # Only the gateway listens where --host says; only the gRPC services serve reflection.
    assert {name: args.host for name, args in parsed.items()} == {
        "vision": "127.0.0.1",
        "audio": "127.0.0.1",
        "decoder": "127.0.0.1",
        "gateway": "0.0.0.0",
    }
    assert [name for name, args in parsed.items() if args.enable_reflection] == [
        "vision",
        "audio",
        "decoder",
    ]
    assert parsed["decoder"].quantization == "none"
    gateway = parsed["gateway"]
    # A wildcard bind address is not a place to connect to.
    targets = (gateway.vision_target, gateway.audio_target, gateway.decoder_target)
    assert targets == ("127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003")


def test_up_is_an_autoglm_command() -> None:
    args = build_parser().parse_args(["up", "--bundle", "/b", "--gateway-port", "9000"])
    assert config_from_args(LauncherConfig, args, {}).gateway_port == 9000


def test_a_missing_bundle_is_reported_before_anything_starts(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "services.cli", "up", "--bundle", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 2
    assert "autoglm bundle init" in result.stderr


def test_the_probe_says_not_ready_when_nothing_listens() -> None:
    port = free_port()
    assert health_probe.main([f"127.0.0.1:{port}", GRPC_SERVICE_NAMES["vision"]]) == 1
    assert health_probe.main([f"http://127.0.0.1:{port}/health"]) == 1
    assert health_probe.main([]) == 2


# The real stack.


@pytest.fixture
def launcher(quantized_bundle_dir: Path, tmp_path: Path) -> Iterator[Up]:
    started = Up(quantized_bundle_dir, tmp_path / "up.log")
    try:
        yield started
    finally:
        started.kill_everything()


def refusal(target: str) -> tuple[grpc.StatusCode, grpc.StatusCode]:
    """What a caller without the token gets from Decoder.Info and from server reflection."""
    codes = []
    with grpc.insecure_channel(target) as channel:
        with pytest.raises(grpc.RpcError) as info:
            decoder_pb2_grpc.DecoderStub(channel).Info(decoder_pb2.DecoderInfoRequest(), timeout=10)
        codes.append(info.value.code())  # type: ignore[attr-defined]
        listing = reflection_pb2.ServerReflectionRequest(list_services="")
        replies = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([listing]), timeout=10
        )
        with pytest.raises(grpc.RpcError) as reflected:
            next(replies)
        codes.append(reflected.value.code())  # type: ignore[attr-defined]
    return codes[0], codes[1]


@pytest.mark.stack
def test_up_serves_and_stops_every_child_on_sigterm(launcher: Up) -> None:
    url = launcher.wait_for_url(READY_TIMEOUT_S)
    assert httpx.get(f"{url}/health", timeout=10).status_code == 200
    assert httpx.get(f"{url}/v1/models", timeout=10).json()["data"][0]["id"] == "autoglm-phone-9b"
    # The gateway's calls carry the run's token; a caller without it is refused, and
    # reflection is off unless asked for.
    body = {"model": "autoglm-phone-9b", "messages": [{"role": "user", "content": "hi"}]}
    reply = httpx.post(f"{url}/v1/chat/completions", json=body | {"max_tokens": 2}, timeout=60)
    assert reply.status_code == 200, reply.text
    assert refusal(launcher.target("decoder")) == (
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.UNIMPLEMENTED,
    )
    children = launcher.children()
    assert sorted(children) == sorted(SERVICES)
    # The probe the compose healthchecks run agrees, and asks for the service by name.
    for name, service in GRPC_SERVICE_NAMES.items():
        target = launcher.target(name)
        assert health_probe.main([target, service]) == 0
        assert health_probe.main([target, "autoglm.v1.Unknown"]) == 1
    assert health_probe.main([f"{url}/health"]) == 0

    launcher.process.send_signal(signal.SIGTERM)

    assert launcher.wait(STOP_TIMEOUT_S) == 0, launcher.log
    assert "stopped on SIGTERM" in launcher.log
    assert [name for name, pid in children.items() if alive(pid)] == []


def send(launcher: Up, burst: Sequence[signal.Signals]) -> None:
    """Each signal to the launcher, as fast as they can be sent: a terminal's Ctrl-C or
    `kill -TERM -PGID` reaches `make up` and the launcher, and make forwards it once more."""
    for sig in burst:
        os.kill(launcher.process.pid, sig)


def assert_everything_stopped(launcher: Up, children: dict[str, int]) -> None:
    code = launcher.wait(STOP_TIMEOUT_S)  # a TimeoutError, with the log, if it hangs
    assert code == 0, launcher.log
    assert [name for name, pid in children.items() if alive(pid)] == []


@pytest.mark.stack
@pytest.mark.parametrize(
    "burst",
    [(signal.SIGTERM, signal.SIGTERM), (signal.SIGINT, signal.SIGTERM)],
    ids=["term-term", "int-term"],
)
def test_up_stops_on_signals_in_quick_succession(
    launcher: Up, burst: tuple[signal.Signals, ...]
) -> None:
    launcher.wait_for_url(READY_TIMEOUT_S)
    children = launcher.children()

    send(launcher, burst)

    assert_everything_stopped(launcher, children)
    # One stop, on one of the burst's signals: which one the process sees first is not
    # observable (two signals sent microseconds apart may reach two of its threads, and the
    # interpreter runs the handler of whichever it finds tripped first).
    stopped_on = {sig.name for sig in burst if f"stopped on {sig.name}" in launcher.log}
    assert len(stopped_on) == 1 and launcher.log.count("stopped on") == 1, launcher.log


@pytest.mark.stack
def test_up_stops_on_a_storm_of_signals_while_starting(launcher: Up) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while len(children := launcher.children()) < len(SERVICES):
        assert time.monotonic() < deadline and launcher.process.poll() is None, launcher.log
        time.sleep(0.05)

    for _ in range(20):
        send(launcher, (signal.SIGINT, signal.SIGTERM))
        time.sleep(0.0005)

    assert_everything_stopped(launcher, children)
    assert "stopped on SIG" in launcher.log


@pytest.mark.stack
def test_when_one_service_dies_up_stops_the_rest_and_names_it(launcher: Up) -> None:
    launcher.wait_for_url(READY_TIMEOUT_S)
    children = launcher.children()

    os.kill(children["decoder"], signal.SIGKILL)

    assert launcher.wait(STOP_TIMEOUT_S) != 0
    assert "decoder was killed by SIGKILL; stopping vision, audio, gateway" in launcher.log
    assert [name for name, pid in children.items() if alive(pid)] == []


def bundle_of(architecture: str, parts: tuple[str, ...], root: Path = Path("/b")) -> Bundle:
    return Bundle(root, "m", {p: "." for p in parts}, architecture)


def test_up_starts_only_the_services_the_bundle_needs() -> None:
    assert services_for(bundle_of("default", ("decoder", "vision", "audio", "fusion"))) == SERVICES
    glm4v = bundle_of("glm4v", ("decoder", "vision", "fusion"))
    assert services_for(glm4v) == ("vision", "decoder", "gateway")
    assert services_for(bundle_of("glm4", ("decoder",))) == ("decoder", "gateway")


def test_an_imported_bundle_is_served_unquantized_until_quantized(tmp_path: Path) -> None:
    imported = bundle_of("glm4v", ("decoder", "vision", "fusion"), tmp_path)
    assert default_decoder_quantization(imported) == "none"
    config = LauncherConfig(bundle=tmp_path)
    assert "none" in config.serve_args("decoder", default_decoder_quantization(imported))
    asked = LauncherConfig(bundle=tmp_path, decoder_quantization="int8")
    assert "int8" in asked.serve_args("decoder", default_decoder_quantization(imported))
    imported.decoder_gptq.mkdir()
    (imported.decoder_gptq / "quantize_config.json").write_text("{}")
    assert default_decoder_quantization(imported) == ""
    default = bundle_of("default", ("decoder", "vision", "audio", "fusion"), tmp_path / "d")
    assert default_decoder_quantization(default) == ""


@pytest.mark.stack
def test_up_serves_an_imported_glm4v_bundle_without_audio_or_quantizing(
    glm4v_checkpoint: Path, tmp_path: Path
) -> None:
    checkpoint = Path(shutil.copytree(glm4v_checkpoint, tmp_path / "GLM-4.1V"))
    import_checkpoint(checkpoint)
    up = Up(checkpoint, tmp_path / "up.log")
    try:
        url = up.wait_for_url(READY_TIMEOUT_S)
        assert sorted(up.children()) == ["decoder", "gateway", "vision"]
        assert "decoder unquantized" in up.log
        card = httpx.get(f"{url}/v1/models", timeout=10).json()["data"][0]
        assert card["modalities"] == ["text", "image"]
        content = [image_part(image_bytes(size=(120, 60))), {"type": "text", "text": "hi"}]
        body = {
            "model": card["id"],
            "max_tokens": 2,
            "messages": [{"role": "user", "content": content}],
        }
        reply = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)
        assert reply.status_code == 200, reply.text
        assert reply.json()["usage"]["prompt_tokens_details"]["image_tokens"] == 8  # 56x112 px
        up.process.send_signal(signal.SIGTERM)
        assert up.wait(60) == 0
    finally:
        up.kill_everything()
