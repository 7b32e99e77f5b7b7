"""The Dockerfile: lint-clean (hadolint), one image whose entrypoint is `autoglm`, exposing only
the gateway's port, with the torch build left to the deployer."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    linter = Path(sys.executable).parent / "hadolint"
    return subprocess.run(
        [str(linter), "--no-color", str(path)], capture_output=True, text=True, timeout=60
    )


def instructions(name: str) -> list[str]:
    parsed = DockerfileParser(str(DOCKERFILE))
    return [i["value"] for i in parsed.structure if i["instruction"] == name]


def test_hadolint_finds_nothing() -> None:
    result = hadolint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_does_find_problems(tmp_path: Path) -> None:
    sloppy = tmp_path / "Dockerfile"
    sloppy.write_text("FROM python\nRUN cd /app && pip install torch\n")
    result = hadolint(sloppy)
    assert result.returncode != 0
    assert "DL3006" in result.stdout  # untagged base image


def test_one_image_runs_every_autoglm_command() -> None:
    parsed = DockerfileParser(str(DOCKERFILE))
    assert parsed.baseimage == "python:3.11-slim"
    assert [json.loads(v) for v in instructions("ENTRYPOINT")] == [["autoglm"]]
    assert instructions("USER") == ["1000"]


def test_it_exposes_only_the_gateway_port() -> None:
    # `docker run -P` publishes every exposed port: the model services' must not be among them.
    (exposed,) = instructions("EXPOSE")
    assert [int(port) for port in exposed.split()] == [8000]


def test_the_token_directory_belongs_to_the_unprivileged_user() -> None:
    # A new named volume takes the ownership of the directory it is mounted on.
    (setup,) = [run for run in instructions("RUN") if "useradd" in run]
    assert "chown autoglm /models /secrets" in setup and "chmod 700 /secrets" in setup


@pytest.mark.parametrize("arg", ["TORCH_INDEX_URL", "TORCH_VERSION"])
def test_the_torch_build_is_a_build_argument(arg: str) -> None:
    parsed = DockerfileParser(str(DOCKERFILE))
    assert arg in parsed.args
    assert any(f"${{{arg}}}" in run for run in instructions("RUN"))


def test_the_torch_version_matches_the_project_pin() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    version = DockerfileParser(str(DOCKERFILE)).args["TORCH_VERSION"]
    assert f"torch=={version}" in project["dependencies"]


def test_the_build_context_leaves_out_environments_and_bundles() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "models", ".git"} <= set(ignored)
