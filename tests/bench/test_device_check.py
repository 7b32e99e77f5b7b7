"""bench.device_check: the whole accelerator check on the CPU, and its refusal to pass silently.

The GPU run uses the same code with --device cuda:0; here it proves the script itself works.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from bench.device_check import wheels
from bench.device_check.__main__ import main
from bench.device_check.runner import Check, Group, Probe, execute

ROOT = Path(__file__).resolve().parents[2]


def results_by_name(report: dict[str, Any], group: str) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in report["groups"][group]}


@pytest.mark.stack
def test_every_check_passes_on_the_cpu_with_figures_in_range(
    quantized_bundle_dir: Path, tmp_path: Path
) -> None:
    output = tmp_path / "device_check.json"
    command = [sys.executable, "-m", "bench.device_check", "--device", "cpu"]
    command += ["--bundle", str(quantized_bundle_dir), "--output", str(output), "--repeats", "5"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOGLM_")}
    done = subprocess.run(command, capture_output=True, text=True, timeout=540, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]

    report = json.loads(output.read_text())
    assert report["ok"] is True and report["complete"] is True
    assert (report["device"], report["device_name"]) == ("cpu", "cpu")
    assert report["torch"] and report["bitsandbytes"] and report["machine"]
    assert list(report["groups"]) == ["kernels", "serving in process", "stack: autoglm up"]
    failed = [r for group in report["groups"].values() for r in group if not r["ok"]]
    assert failed == []

    kernels = results_by_name(report, "kernels")
    assert len(kernels) == 3 * 4  # three shapes x int8, nf4, gptq, gptq act-order
    for name, result in kernels.items():
        figures = result["figures"]
        for rows in (1, 16):
            assert figures[f"ms_m{rows}"] > 0 and figures[f"bfloat16_ms_m{rows}"] > 0
            assert figures[f"speedup_m{rows}"] > 0
        if name.startswith("int8"):
            assert 0.99 <= figures["cosine"] <= 1.0 + 1e-6
        elif name.startswith("nf4"):
            assert 0.98 <= figures["cosine"] <= 1.0 + 1e-6
        else:
            assert figures["kernel"] == "int4-cpu"
            assert 0 < figures["rel_error"] < 1e-2

    serving = results_by_name(report, "serving in process")
    for quant in ("gptq", "nf4", "int8", "none"):
        figures = serving[f"decoder {quant}"]["figures"]
        assert figures["device"] == "cpu"
        # On the CPU the reference is the same engine: every token agrees.
        assert (figures["token_match"], figures["first_token_match"]) == (1.0, "4/4")
    assert serving["decoder gptq"]["figures"]["kernels"] == "int4-cpu"
    for tower in ("vision tower int8", "audio tower int8"):
        figures = serving[tower]["figures"]
        assert figures["device"] == "cpu" and figures["tokens"] > 0
        assert figures["cosine"] >= 0.99

    stack = results_by_name(report, "stack: autoglm up")
    assert list(stack) == ["up: ready", "Info devices", "chat: image + audio", "SIGTERM"]
    devices = stack["Info devices"]["figures"]
    assert [devices[f"{s}_device"] for s in ("vision", "audio", "decoder")] == ["cpu"] * 3
    assert stack["chat: image + audio"]["figures"]["completion_tokens"] >= 1
    assert stack["SIGTERM"]["figures"]["exit_code"] == 0
    assert (tmp_path / "device_check-up.log").read_text().count("is being served at") == 1


def passing(probe: Probe) -> None:
    probe.record(value=1.0)
    probe.require(True, "holds")


def broken(probe: Probe) -> None:
    probe.record(before=2.0)
    raise RuntimeError("kernel refused the shape")


def unmet(probe: Probe) -> None:
    probe.record(cosine=0.5)
    probe.require(False, "cosine >= 0.99")


def vacuous(probe: Probe) -> None:
    probe.record(value=3.0)


def run(groups: list[Group], output: Path) -> tuple[int, dict[str, Any]]:
    code = execute(groups, output, {"device": "cpu"}, Console(file=io.StringIO()))
    return code, json.loads(output.read_text())


def test_a_check_that_raises_fails_the_run_after_the_others_ran(tmp_path: Path) -> None:
    checks = [Check("broken", broken), Check("passing", passing)]
    checks += [Check("unmet", unmet), Check("vacuous", vacuous)]
    groups = [Group("first", lambda: checks), Group("second", lambda: [Check("later", passing)])]

    code, report = run(groups, tmp_path / "report.json")

    assert code == 1 and report["ok"] is False
    first = results_by_name(report, "first")
    assert first["broken"]["ok"] is False
    assert first["broken"]["problems"] == ["RuntimeError: kernel refused the shape"]
    assert first["broken"]["figures"] == {"before": 2.0}  # what it measured before failing
    assert first["passing"]["ok"] is True
    assert (first["unmet"]["ok"], first["unmet"]["problems"]) == (False, ["cosine >= 0.99"])
    assert first["unmet"]["figures"] == {"cosine": 0.5}
    # A check that states no requirement cannot pass.
    assert (first["vacuous"]["ok"], first["vacuous"]["problems"]) == (False, ["checked nothing"])
    assert results_by_name(report, "second")["later"]["ok"] is True


def test_a_group_that_cannot_start_is_a_failure_and_the_next_group_runs(tmp_path: Path) -> None:
    def no_stack() -> Iterator[Check]:
        raise OSError("no free port")
        yield Check("never", passing)  # a generator, as stack_checks is

    groups = [Group("stack", no_stack), Group("after", lambda: [Check("later", passing)])]

    code, report = run(groups, tmp_path / "report.json")

    assert code == 1
    [failure] = report["groups"]["stack"]
    assert failure["ok"] is False and failure["problems"] == ["OSError: no free port"]
    assert report["groups"]["after"][0]["ok"] is True


def test_all_ok_exits_zero(tmp_path: Path) -> None:
    code, report = run([Group("only", lambda: [Check("passing", passing)])], tmp_path / "r.json")
    assert (code, report["ok"]) == (0, True)


def test_a_device_that_is_not_there_is_refused_before_anything_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--device", "cuda:7", "--output", str(tmp_path / "r.json")])
    assert exit_info.value.code == 2
    assert "cuda:7" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


def test_the_gpu_wheels_are_the_run_time_closure_without_the_image_stack() -> None:
    versions = wheels.closure()
    for needed in ("bitsandbytes", "grpcio", "grpcio-health-checking", "protobuf", "fastapi"):
        assert needed in versions
    assert {"openai", "soundfile", "transformers", "pydantic-core"} <= set(versions)
    assert not {"torch", "numpy", "autoglm-serve"} & set(versions)
    assert not [name for name in versions if name.startswith("nvidia-")]


def test_bitsandbytes_keeps_only_its_cpu_and_cuda_13_libraries(tmp_path: Path) -> None:
    wheel = tmp_path / "bitsandbytes-0.0-py3-none-any.whl"
    libraries = ["cpu", "cuda118", "cuda128", "cuda130", "cuda132", "rocm64"]
    paths = [f"bitsandbytes/libbitsandbytes_{lib}.so" for lib in libraries]
    paths.append("bitsandbytes/__init__.py")
    record = "".join(f"{path},sha256=x,1\n" for path in paths)
    with zipfile.ZipFile(wheel, "w") as out:
        for path in paths:
            out.writestr(path, b"x")
        out.writestr("bitsandbytes-0.0.dist-info/RECORD", record)

    wheels.trim_bitsandbytes(wheel)

    kept = {f"bitsandbytes/libbitsandbytes_{lib}.so" for lib in ("cpu", "cuda130", "cuda132")}
    kept.add("bitsandbytes/__init__.py")
    with zipfile.ZipFile(wheel) as trimmed:
        assert set(trimmed.namelist()) == kept | {"bitsandbytes-0.0.dist-info/RECORD"}
        lines = trimmed.read("bitsandbytes-0.0.dist-info/RECORD").decode().splitlines()
    assert {line.split(",")[0] for line in lines} == kept
