"""deploy/k8s: every manifest valid against the Kubernetes API schemas (kubernetes-validate,
offline), and wired together where the schemas are silent: GPUs, named gRPC probes, selectors,
headless Services behind the gateway's dns:/// targets, real `autoglm` commands."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from services.health_probe import GRPC_SERVICE_NAMES
from tests.deploy.autoglm_args import parse_autoglm, undeclared_variables

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = sorted((ROOT / "deploy" / "k8s").glob("*.yaml"))
GPU_SERVICES = ("vision", "audio", "decoder")
PORTS = {"vision": 50051, "audio": 50052, "decoder": 50053, "gateway": 8000}


def resources() -> list[dict[str, Any]]:
    return [doc for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text()) if doc]


def of_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {r["metadata"]["name"]: r for r in resources() if r["kind"] == kind}


def pod_specs() -> dict[str, dict[str, Any]]:
    """Every pod template, Deployments' and Jobs'."""
    return {
        f"{r['kind']}/{r['metadata']['name']}": r["spec"]["template"]["spec"]
        for r in resources()
        if r["kind"] in ("Deployment", "Job")
    }


def main_container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(container)


def environment(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", [])}


def validate(resource: dict[str, Any]) -> None:
    kubernetes_validate.validate(resource, kubernetes_validate.latest_version(), strict=True)


def test_there_is_a_deployment_per_service_and_a_bundle_job() -> None:
    assert set(of_kind("Deployment")) == {"vision", "audio", "decoder", "gateway"}
    assert set(of_kind("Job")) == {"autoglm-bundle"}


@pytest.mark.parametrize(
    "resource", resources(), ids=lambda r: f"{r['kind']}/{r['metadata']['name']}"
)
def test_each_resource_matches_the_kubernetes_api_schema(resource: dict[str, Any]) -> None:
    validate(resource)


def test_the_validator_rejects_a_malformed_probe() -> None:
    deployment = copy.deepcopy(of_kind("Deployment")["vision"])
    main_container(deployment)  # exactly one container
    probe = deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    probe["grpc"]["port"] = "grpc-port-name"  # gRPC probes take a number, unlike httpGet
    with pytest.raises(
        kubernetes_validate.ValidationError, match="'grpc-port-name' is not of type 'integer'"
    ):
        validate(deployment)


@pytest.mark.parametrize("name", GPU_SERVICES)
def test_each_model_service_gets_one_gpu_and_uses_it(name: str) -> None:
    container = main_container(of_kind("Deployment")[name])
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    args = parse_autoglm(container["args"], environment(container))
    assert (args.service, args.device, args.port) == (name, "cuda:0", PORTS[name])


def test_the_gateway_needs_no_gpu() -> None:
    container = main_container(of_kind("Deployment")["gateway"])
    assert "nvidia.com/gpu" not in container.get("resources", {}).get("limits", {})


@pytest.mark.parametrize("name", GPU_SERVICES)
def test_probes_ask_for_the_named_grpc_service(name: str) -> None:
    # The overall status "" is SERVING from the start; only the name waits for the weights.
    container = main_container(of_kind("Deployment")[name])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"] == {
            "port": PORTS[name],
            "service": GRPC_SERVICE_NAMES[name],
        }
    assert container["ports"] == [{"name": "grpc", "containerPort": PORTS[name]}]


def test_the_gateway_is_ready_when_its_backends_are() -> None:
    container = main_container(of_kind("Deployment")["gateway"])
    assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    # A backend outage makes /health 503; that must not restart the gateway.
    assert "httpGet" not in container["livenessProbe"]


@pytest.mark.parametrize("name", sorted(of_kind("Service")))
def test_each_service_selects_its_deployment(name: str) -> None:
    service = of_kind("Service")[name]
    deployment = of_kind("Deployment")[name]
    selector = service["spec"]["selector"]
    assert deployment["spec"]["selector"]["matchLabels"] == selector
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    container_ports = {p["name"]: p["containerPort"] for p in main_container(deployment)["ports"]}
    for port in service["spec"]["ports"]:
        assert container_ports[port["targetPort"]] == port["port"] == PORTS[name]


def test_the_gateway_balances_over_headless_services() -> None:
    services = of_kind("Service")
    container = main_container(of_kind("Deployment")["gateway"])
    args = parse_autoglm(container["args"], environment(container))
    for name in GPU_SERVICES:
        # Headless: DNS returns every pod, so round_robin reaches every replica.
        assert services[name]["spec"]["clusterIP"] == "None"
        assert getattr(args, f"{name}_target") == f"dns:///{name}:{PORTS[name]}"
    assert "clusterIP" not in services["gateway"]["spec"]


@pytest.mark.parametrize("pod", sorted(pod_specs()))
def test_every_container_runs_a_real_autoglm_command(pod: str) -> None:
    for container in pod_specs()[pod]["containers"]:
        parse_autoglm(container["args"], environment(container))
        assert undeclared_variables(environment(container)) == []


def test_the_job_builds_then_quantizes_the_bundle() -> None:
    job = pod_specs()["Job/autoglm-bundle"]
    steps = [c["args"] for c in (*job["initContainers"], *job["containers"])]
    assert [parse_autoglm(step, {}).command for step in steps] == ["bundle", "quantize"]


@pytest.mark.parametrize("pod", sorted(pod_specs()))
def test_every_pod_mounts_the_bundle_claim(pod: str) -> None:
    claims = set(of_kind("PersistentVolumeClaim"))
    spec = pod_specs()[pod]
    volumes = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"]}
    assert set(volumes.values()) <= claims and volumes
    for container in (*spec.get("initContainers", []), *spec["containers"]):
        assert {m["name"] for m in container["volumeMounts"]} <= set(volumes)
