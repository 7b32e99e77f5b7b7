"""deploy/k8s: every manifest valid against the Kubernetes API schemas (kubernetes-validate,
offline), and wired together where the schemas are silent: GPUs, named gRPC probes, selectors,
headless Services behind the gateway's dns:/// targets, real `autoglm` commands, the internal
token mounted from one Secret, and a NetworkPolicy that lets only the gateway in. The audio
service is a folder of its own, applied only for a bundle with an audio part; so are the two
bundle variants (default-bundle/: a Job builds and quantizes it; imported-bundle/: a copied
checkpoint, no Job), each a ConfigMap of AUTOGLM_* settings every Deployment reads."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate
import pytest
import yaml

from services.health_probe import GRPC_SERVICE_NAMES
from tests.deploy.autoglm_args import parse_autoglm, service_config, undeclared_variables

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
# `kubectl apply -f deploy/k8s/` (not recursive) for every bundle; audio/ only with an audio part.
CORE_MANIFESTS = sorted(K8S.glob("*.yaml"))
AUDIO_MANIFESTS = sorted((K8S / "audio").glob("*.yaml"))
# Exactly one of these is applied with the core: what fills the volume, and its settings.
VARIANTS = {
    name: sorted((K8S / name).glob("*.yaml")) for name in ("default-bundle", "imported-bundle")
}
MANIFESTS = [*CORE_MANIFESTS, *AUDIO_MANIFESTS, *VARIANTS["default-bundle"]]
SETTINGS = "autoglm-settings"
GPU_SERVICES = ("vision", "audio", "decoder")
SERVERS = (*GPU_SERVICES, "gateway")
TOKEN_SECRET = "autoglm-internal-token"
PORTS = {"vision": 50051, "audio": 50052, "decoder": 50053, "gateway": 8000}


def resources(manifests: list[Path] = MANIFESTS) -> list[dict[str, Any]]:
    return [doc for path in manifests for doc in yaml.safe_load_all(path.read_text()) if doc]


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


def settings(variant: str) -> dict[str, str]:
    """The variant's ConfigMap of AUTOGLM_* settings."""
    (config_map,) = [r for r in resources(VARIANTS[variant]) if r["kind"] == "ConfigMap"]
    assert config_map["metadata"]["name"] == SETTINGS
    return dict(config_map["data"])


def environment(container: dict[str, Any], variant: str = "default-bundle") -> dict[str, str]:
    """The container's variables: the settings ConfigMap it reads whole (envFrom), then its
    own ``env``, which Kubernetes lets win."""
    sources = [s["configMapRef"]["name"] for s in container.get("envFrom", [])]
    assert set(sources) <= {SETTINGS}, sources
    shared = settings(variant) if sources else {}
    return shared | {e["name"]: e["value"] for e in container.get("env", [])}


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


def test_the_audio_service_is_applied_apart_and_the_gateway_does_not_need_it() -> None:
    core = resources(CORE_MANIFESTS)
    assert {r["metadata"]["name"] for r in resources(AUDIO_MANIFESTS)} == {"audio"}
    assert "audio" not in {r["metadata"]["name"] for r in core if r["kind"] != "NetworkPolicy"}
    gateway = main_container(of_kind("Deployment")["gateway"])
    spec = of_kind("Deployment")["gateway"]["spec"]["template"]["spec"]
    # It waits for the bundle only (no init container or probe on the audio service).
    waits = [" ".join(c.get("command", [])) for c in spec["initContainers"]]
    assert all("audio" not in wait for wait in waits)
    assert "audio" not in str(gateway["readinessProbe"]) + str(gateway["livenessProbe"])


def test_the_job_builds_then_quantizes_the_bundle() -> None:
    job = pod_specs()["Job/autoglm-bundle"]
    steps = [c["args"] for c in (*job["initContainers"], *job["containers"])]
    assert [parse_autoglm(step, {}).command for step in steps] == ["bundle", "quantize"]


@pytest.mark.parametrize("pod", sorted(pod_specs()))
def test_every_pod_mounts_the_bundle_claim(pod: str) -> None:
    claims = set(of_kind("PersistentVolumeClaim"))
    spec = pod_specs()[pod]
    volumes = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in spec["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert set(volumes.values()) <= claims and volumes
    secrets = {v["name"] for v in spec["volumes"] if "secret" in v}
    for container in (*spec.get("initContainers", []), *spec["containers"]):
        assert {m["name"] for m in container["volumeMounts"]} <= set(volumes) | secrets


def token_source(deployment: dict[str, Any]) -> tuple[str, bool] | None:
    """The Secret the main container's --internal-token-file comes from, and whether its
    mount is read-only; None when the service runs without a token."""
    container = main_container(deployment)
    token = service_config(container["args"], environment(container)).internal_token_file
    if token is None:
        return None
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    for mount in container["volumeMounts"]:
        if PurePosixPath(mount["mountPath"]) == PurePosixPath(token).parent:
            # A Secret mounted whole: each key is a file, so the key is the file's name.
            assert token.name == "token", token
            return volumes[mount["name"]]["secret"]["secretName"], mount.get("readOnly", False)
    return "", False


def test_every_server_reads_the_token_from_one_secret() -> None:
    deployments = of_kind("Deployment")
    assert {name: token_source(deployments[name]) for name in SERVERS} == {
        name: (TOKEN_SECRET, True) for name in SERVERS
    }
    for name in SERVERS:
        spec = deployments[name]["spec"]["template"]["spec"]
        # The Secret's files are group-readable by the pod's group: user 1000 can read them.
        assert spec["securityContext"]["fsGroup"] == 1000
        config = service_config(
            main_container(deployments[name])["args"],
            environment(main_container(deployments[name])),
        )
        assert (config.host, config.enable_reflection) == ("0.0.0.0", False)


def test_a_server_without_the_token_is_found() -> None:
    decoder = copy.deepcopy(of_kind("Deployment")["decoder"])
    env = main_container(decoder)["env"]
    decoder["spec"]["template"]["spec"]["containers"][0]["env"] = [
        e for e in env if e["name"] != "AUTOGLM_INTERNAL_TOKEN_FILE"
    ]
    assert token_source(decoder) is None


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels and matchExpressions) applied to ``labels``."""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    tests = {
        "In": lambda e: labels.get(e["key"]) in e["values"],
        "NotIn": lambda e: labels.get(e["key"]) not in e["values"],
        "Exists": lambda e: e["key"] in labels,
        "DoesNotExist": lambda e: e["key"] not in labels,
    }
    return all(tests[e["operator"]](e) for e in selector.get("matchExpressions", []))


def pod_labels() -> dict[str, dict[str, str]]:
    return {
        r["metadata"]["name"]: r["spec"]["template"]["metadata"]["labels"]
        for r in resources()
        if r["kind"] in ("Deployment", "Job")
    }


def admitted(policy: dict[str, Any]) -> dict[str, set[str]]:
    """For each pod the policy isolates: the pods it lets in, by name."""
    spec = policy["spec"]
    assert "Ingress" in spec["policyTypes"]
    targets = [n for n, labels in pod_labels().items() if selects(spec["podSelector"], labels)]
    sources: set[str] = set()
    for rule in spec.get("ingress", []):
        for peer in rule["from"]:
            # Only pod selectors in this namespace: no IP blocks, no other namespaces.
            assert set(peer) == {"podSelector"}, peer
            sources |= {
                n for n, labels in pod_labels().items() if selects(peer["podSelector"], labels)
            }
    return {target: sources for target in targets}


def test_only_the_gateway_reaches_the_model_services() -> None:
    (policy,) = of_kind("NetworkPolicy").values()
    assert admitted(policy) == {name: {"gateway"} for name in GPU_SERVICES}
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": "grpc"}]
    for name in GPU_SERVICES:
        # The named port the rule opens is each service's gRPC port.
        assert main_container(of_kind("Deployment")[name])["ports"][0]["name"] == "grpc"


def test_a_policy_that_lets_others_in_is_found() -> None:
    (policy,) = copy.deepcopy(list(of_kind("NetworkPolicy").values()))
    peer = policy["spec"]["ingress"][0]["from"][0]["podSelector"]
    del peer["matchLabels"]["app.kubernetes.io/name"]
    assert admitted(policy)["decoder"] == {
        "vision",
        "audio",
        "decoder",
        "gateway",
        "autoglm-bundle",
    }


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_each_variant_is_valid_and_only_the_default_bundle_has_a_job(variant: str) -> None:
    kinds = sorted(r["kind"] for r in resources(VARIANTS[variant]))
    assert kinds == (["ConfigMap", "Job"] if variant == "default-bundle" else ["ConfigMap"])
    for resource in resources(VARIANTS[variant]):
        validate(resource)
    assert undeclared_variables(settings(variant)) == []


@pytest.mark.parametrize(
    ("variant", "quantization"), [("default-bundle", "gptq"), ("imported-bundle", "none")]
)
def test_every_server_takes_its_settings_from_the_variant(variant: str, quantization: str) -> None:
    for name, deployment in of_kind("Deployment").items():
        container = main_container(deployment)
        assert container["envFrom"] == [{"configMapRef": {"name": SETTINGS}}], name
        config = service_config(container["args"], environment(container, variant))
        if name == "decoder":
            assert config.quantization == quantization  # type: ignore[attr-defined]


def wait_for_bundle(variant: str, bundle: Path) -> bool:
    """Whether the decoder's init container, run with the variant's settings against
    ``bundle``, lets the decoder start (it exits) rather than waiting on."""
    (init,) = of_kind("Deployment")["decoder"]["spec"]["template"]["spec"]["initContainers"]
    environ = environment(init, variant) | {"AUTOGLM_BUNDLE": str(bundle), "PATH": "/usr/bin:/bin"}
    try:
        subprocess.run(init["command"], env=environ, timeout=1.0, check=True, capture_output=True)
    except subprocess.TimeoutExpired:
        return False
    return True


def test_the_decoder_waits_for_what_its_variant_serves(tmp_path: Path) -> None:
    (tmp_path / "bundle.json").write_text("{}")
    # gptq (the default bundle): the Job's quantized decoder too; none: the bundle alone
    assert not wait_for_bundle("default-bundle", tmp_path)
    assert wait_for_bundle("imported-bundle", tmp_path)
    (tmp_path / "decoder-gptq").mkdir()
    (tmp_path / "decoder-gptq" / "quantize_config.json").write_text("{}")
    assert wait_for_bundle("default-bundle", tmp_path)
    assert not wait_for_bundle("imported-bundle", tmp_path / "nothing-copied-yet")
