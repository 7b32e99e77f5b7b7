"""docker-compose.yml: valid per the Compose specification, and sound where the schema is silent:
one GPU per service, every dependency defined, every command a real `autoglm` command, only the
gateway's port published, the model services behind a generated internal token, and the audio
service and the decoder's quantization as profiles that `.env` turns on for the default bundle,
so that a GLM-4.1V bundle (no audio part, not quantized) comes up without them."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from bundle.layout import DEFAULT, GLM4V, PARTS, Bundle
from services.health_probe import GRPC_SERVICE_NAMES
from services.launcher import services_for
from services.vision.config import VisionConfig
from tests.deploy.autoglm_args import parse_autoglm, service_config, undeclared_variables

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOTENV = ROOT / ".env"
GPU_SERVICES = ("vision", "audio", "decoder")
SERVERS = (*GPU_SERVICES, "gateway")
PORTS = {"vision": 50051, "audio": 50052, "decoder": 50053, "gateway": 8000}


# An imported GLM-4.1V bundle before `autoglm quantize`, as docker-compose.yml documents it.
IMPORTED = {"COMPOSE_PROFILES": "", "AUTOGLM_DECODER_QUANT": "none"}


def dotenv() -> dict[str, str]:
    """The variables `.env` sets (compose reads it from the project directory)."""
    lines = [line.strip() for line in DOTENV.read_text().splitlines()]
    pairs = [line.split("=", 1) for line in lines if line and not line.startswith("#")]
    return {name: value for name, value in pairs}


def load(path: Path = COMPOSE_FILE, variables: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The file with ``${NAME:-default}`` replaced as compose does, from ``variables``
    (default: `.env`)."""
    values = dotenv() if variables is None else variables

    def value(match: re.Match[str]) -> str:
        return values.get(match[1]) or match[2]

    return dict(yaml.safe_load(re.sub(r"\$\{(\w+):-([^}]*)\}", value, path.read_text())))


def enabled(compose: dict[str, Any], variables: Mapping[str, str] | None = None) -> set[str]:
    """The services `docker compose up` starts with COMPOSE_PROFILES from ``variables``."""
    values = dotenv() if variables is None else variables
    profiles = set(values.get("COMPOSE_PROFILES", "").split(","))
    return {
        name
        for name, service in compose["services"].items()
        if "profiles" not in service or profiles & set(service["profiles"])
    }


def validate(path: Path) -> subprocess.CompletedProcess[str]:
    """The Compose specification's JSON schema, as shipped with check-jsonschema (offline)."""
    validator = Path(sys.executable).parent / "check-jsonschema"
    return subprocess.run(
        [str(validator), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def gpu_requests(service: dict[str, Any]) -> list[dict[str, Any]]:
    devices = service.get("deploy", {}).get("resources", {}).get("reservations", {})
    return [d for d in devices.get("devices", []) if "gpu" in d.get("capabilities", [])]


def gpu_problems(compose: dict[str, Any]) -> list[str]:
    """What the schema allows but Docker rejects or the design forbids."""
    problems: list[str] = []
    owner: dict[str, str] = {}
    for name, service in compose["services"].items():
        for request in gpu_requests(service):
            if "count" in request and "device_ids" in request:
                problems.append(f"{name}: count and device_ids together")
            for gpu in request.get("device_ids", []):
                if gpu in owner:
                    problems.append(f"GPU {gpu} given to both {owner[gpu]} and {name}")
                owner[gpu] = name
    return problems


def dependency_problems(compose: dict[str, Any], started: set[str] | None = None) -> list[str]:
    """Dependencies on undefined services, and, of the ``started`` services, required ones on a
    service no active profile enables (compose refuses to start then)."""
    services = compose["services"]
    started = set(services) if started is None else started
    problems = []
    for name, service in services.items():
        for target, rule in service.get("depends_on", {}).items():
            if target not in services:
                problems.append(f"{name} depends on undefined {target}")
            elif name in started and target not in started and rule.get("required", True):
                problems.append(f"{name} requires {target}, which is not started")
    return problems


def mounts(service: dict[str, Any]) -> dict[PurePosixPath, tuple[str, bool]]:
    """Mount point -> (volume, read-only), from the short `volume:/path[:ro]` syntax."""
    found = {}
    for spec in service.get("volumes", []):
        volume, target, *mode = spec.split(":")
        found[PurePosixPath(target)] = (volume, mode == ["ro"])
    return found


def token_problems(compose: dict[str, Any]) -> list[str]:
    """Every server must read the token that a one-shot `autoglm internal-token` wrote on a
    volume, mounted read-only, after that writer finished."""
    services = compose["services"]
    writers: dict[tuple[str, PurePosixPath], str] = {}
    for name, service in services.items():
        args = parse_autoglm(service["command"], {})
        if args.command == "internal-token":
            path = PurePosixPath(args.path)
            volume, read_only = mounts(service)[path.parent]
            assert not read_only, f"{name} cannot write {path}"
            writers[(volume, path.name)] = name
    problems = []
    for name in SERVERS:
        service = services[name]
        token = service_config(service["command"], service["environment"]).internal_token_file
        if token is None:
            problems.append(f"{name}: no internal token")
            continue
        volume, read_only = mounts(service).get(PurePosixPath(token).parent, ("", False))
        writer = writers.get((volume, token.name))
        if writer is None:
            problems.append(f"{name}: nothing writes {token}")
        elif not read_only:
            problems.append(f"{name}: the token volume is writable")
        elif service["depends_on"].get(writer) != {"condition": "service_completed_successfully"}:
            problems.append(f"{name}: starts before {writer} wrote {token}")
    return problems


def test_the_file_matches_the_compose_specification() -> None:
    result = validate(COMPOSE_FILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_validator_rejects_what_the_specification_forbids(tmp_path: Path) -> None:
    compose = load()
    compose["services"]["vision"]["healthcheck"]["every"] = "10s"
    compose["services"]["decoder"]["depends_on"] = "quantize"  # a string, not a list or map
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(yaml.safe_dump(compose))
    result = validate(broken)
    assert result.returncode != 0
    assert "every" in result.stdout and "depends_on" in result.stdout


def test_each_model_service_has_a_gpu_of_its_own() -> None:
    compose = load()
    assert gpu_problems(compose) == []
    given = {name: gpu_requests(compose["services"][name]) for name in GPU_SERVICES}
    assert {name: [r["device_ids"] for r in reqs] for name, reqs in given.items()} == {
        "vision": [["0"]],
        "audio": [["1"]],
        "decoder": [["2"]],
    }
    assert all(r["driver"] == "nvidia" for reqs in given.values() for r in reqs)


def test_gpu_conflicts_are_found() -> None:
    compose = load()
    audio_gpu = gpu_requests(compose["services"]["audio"])[0]
    audio_gpu["device_ids"] = ["0"]
    audio_gpu["count"] = 1
    assert gpu_problems(compose) == [
        "audio: count and device_ids together",
        "GPU 0 given to both vision and audio",
    ]


def test_every_dependency_is_defined() -> None:
    compose = load()
    assert dependency_problems(compose) == []
    compose["services"]["gateway"]["depends_on"]["tokenizer"] = {"condition": "service_healthy"}
    assert dependency_problems(compose) == ["gateway depends on undefined tokenizer"]


@pytest.mark.parametrize("name", sorted(load()["services"]))
def test_every_command_is_a_real_autoglm_command(name: str) -> None:
    service = load()["services"][name]
    parse_autoglm(service["command"], service.get("environment", {}))
    assert undeclared_variables(service.get("environment", {})) == []


def test_only_the_gateway_port_is_published() -> None:
    services = load()["services"]
    published = {name: service["ports"] for name, service in services.items() if "ports" in service}
    assert published == {"gateway": [f"{PORTS['gateway']}:{PORTS['gateway']}"]}
    # The model services are reachable on the compose network only, on their own port.
    for name in GPU_SERVICES:
        assert services[name]["expose"] == [str(PORTS[name])]


def test_every_server_reads_a_generated_internal_token() -> None:
    compose = load()
    assert token_problems(compose) == []
    for name in SERVERS:
        service = compose["services"][name]
        config = service_config(service["command"], service["environment"])
        # All four bind the container network, and reflection stays off.
        assert (config.host, config.enable_reflection) == ("0.0.0.0", False)


def test_a_server_without_the_token_is_found() -> None:
    compose = load()
    decoder = compose["services"]["decoder"]
    # A new mapping: the anchor's is shared by every service.
    decoder["environment"] = {
        k: v for k, v in decoder["environment"].items() if k != "AUTOGLM_INTERNAL_TOKEN_FILE"
    }
    compose["services"]["gateway"]["volumes"] = ["models:/models:ro", "internal-token:/secrets"]
    del compose["services"]["audio"]["depends_on"]["internal-token"]
    assert token_problems(compose) == [
        "audio: starts before internal-token wrote /secrets/internal-token",
        "decoder: no internal token",
        "gateway: the token volume is writable",
    ]


@pytest.mark.parametrize("name", GPU_SERVICES)
def test_model_services_use_the_one_gpu_they_see_and_are_health_gated(name: str) -> None:
    service = load()["services"][name]
    args = parse_autoglm(service["command"], service["environment"])
    assert (args.service, args.device, args.port) == (name, "cuda:0", PORTS[name])
    # The overall health status is SERVING from the start: the probe must ask for the name.
    probe = service["healthcheck"]["test"]
    assert probe[:4] == ["CMD", "python", "-m", "services.health_probe"]
    assert probe[4:] == [f"localhost:{PORTS[name]}", GRPC_SERVICE_NAMES[name]]


def test_the_gateway_starts_once_every_backend_is_healthy() -> None:
    services = load()["services"]
    gateway = services["gateway"]
    # The audio service only when its profile is on.
    assert {name: rule for name, rule in gateway["depends_on"].items() if name in SERVERS} == {
        "vision": {"condition": "service_healthy"},
        "audio": {"condition": "service_healthy", "required": False},
        "decoder": {"condition": "service_healthy"},
    }
    args = parse_autoglm(gateway["command"], gateway["environment"])
    targets = (args.vision_target, args.audio_target, args.decoder_target)
    assert targets == tuple(f"{name}:{PORTS[name]}" for name in GPU_SERVICES)
    assert gateway["ports"] == [f"{PORTS['gateway']}:{args.port}"]
    assert gateway["healthcheck"]["test"][-1] == f"http://localhost:{args.port}/health"


def test_the_bundle_is_built_and_quantized_once_before_the_servers_start() -> None:
    services = load()["services"]
    init = {
        name
        for name, service in services.items()
        if parse_autoglm(service["command"], {}).command in ("bundle", "quantize")
    }
    assert init == {"bundle", "quantize"}
    for name in init:
        assert services[name]["restart"] == "no"
        assert "models:/models" in services[name]["volumes"]
    for name in GPU_SERVICES:
        waits_for = {
            target
            for target, rule in services[name]["depends_on"].items()
            if rule["condition"] == "service_completed_successfully"
        }
        assert waits_for & init, f"{name} starts before the bundle exists"
        # The servers read the bundle; only the init services write it.
        assert services[name]["volumes"][0] == "models:/models:ro"
    assert services["decoder"]["depends_on"]["quantize"] == {
        "condition": "service_completed_successfully",
        "required": False,
    }


def bundle_of(architecture: str, parts: tuple[str, ...]) -> Bundle:
    return Bundle(Path("/models/default"), "autoglm-phone-9b", {p: p for p in parts}, architecture)


def test_env_turns_on_audio_and_quantization_for_the_default_bundle() -> None:
    compose = load()
    profiles = {n: s["profiles"] for n, s in compose["services"].items() if "profiles" in s}
    assert profiles == {"audio": ["audio"], "quantize": ["quantize"]}
    started = enabled(compose)
    assert started == set(compose["services"])
    assert dependency_problems(compose, started) == []
    # Every service the default bundle needs is up, and its decoder serves the GPTQ checkpoint.
    assert set(services_for(bundle_of(DEFAULT, PARTS))) <= started
    decoder = compose["services"]["decoder"]
    assert service_config(decoder["command"], decoder["environment"]).quantization == "gptq"


def test_an_imported_glm4v_bundle_comes_up_without_audio_or_quantization() -> None:
    compose = load(variables=IMPORTED)
    started = enabled(compose, IMPORTED)
    assert started == {"internal-token", "bundle", "vision", "decoder", "gateway"}
    # Nothing started waits for what is left out, and the gateway's /health asks for no audio.
    assert dependency_problems(compose, started) == []
    assert set(services_for(bundle_of(GLM4V, ("decoder", "vision", "fusion")))) <= started
    decoder = compose["services"]["decoder"]
    assert service_config(decoder["command"], decoder["environment"]).quantization == "none"
    # `bundle init` keeps a bundle that is already on the volume.
    assert "--force" not in compose["services"]["bundle"]["command"]


def test_a_gateway_that_requires_the_audio_service_is_found() -> None:
    compose = load(variables=IMPORTED)
    del compose["services"]["gateway"]["depends_on"]["audio"]["required"]
    assert dependency_problems(compose, enabled(compose, IMPORTED)) == [
        "gateway requires audio, which is not started"
    ]


def test_the_vision_gpu_runs_a_glm4v_projector_not_the_gateway_cpu() -> None:
    """The gateway has no GPU in compose; the 9B projector is ~1.4 TFLOP per screenshot."""
    vision = load()["services"]["vision"]
    config = service_config(vision["command"], vision["environment"])
    assert isinstance(config, VisionConfig)
    assert config.project_in_service is True
