"""Device placement: each service is pinned to the device it is given, or fails at start-up."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from services.common.device import resolve_device


def test_cpu_and_auto_resolve() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda:0" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto") == torch.device(expected)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_asking_for_a_gpu_without_cuda_fails_clearly() -> None:
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda:1")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_gpu_index_past_the_last_fails_clearly() -> None:
    with pytest.raises(ValueError, match="GPUs"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")
    assert resolve_device("cuda") == torch.device("cuda", 0)


@pytest.mark.stack
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_service_pinned_to_a_missing_gpu_exits_instead_of_serving(bundle_dir: Path) -> None:
    command = [sys.executable, "-m", "services.cli", "serve", "vision", "--port", "0"]
    command += ["--bundle", str(bundle_dir), "--device", "cuda:0"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "CUDA is not available" in done.stderr
