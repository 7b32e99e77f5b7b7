"""The real processes: `autoglm up` on the device, asked over gRPC and through the gateway.

The launcher runs as a subprocess on free loopback ports, as a user would start it; its output
goes to a log file beside the report. The group's generator owns it: whatever the checks did,
its ``finally`` leaves no process behind.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import grpc
import openai

from autoglm.v1 import (
    audio_pb2_grpc,
    decoder_pb2,
    decoder_pb2_grpc,
    encoder_pb2,
    vision_pb2_grpc,
)
from bench.device_check.runner import Check, Probe
from bundle.layout import Bundle
from services.common import auth
from services.health_probe import http_ready
from services.launcher import services_for
from testkit.media import audio_bytes, b64, data_url, image_bytes
from testkit.processes import Up, alive

READY_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 60.0
RPC_TIMEOUT_S = 10.0
LOG_TAIL_CHARS = 3000


class LaunchedStack:
    """`python -m services.cli up` on ``device``, every service on a free port."""

    def __init__(
        self, bundle: Path, device: str, log_path: Path, settings: Mapping[str, str] | None = None
    ) -> None:
        """``settings``: AUTOGLM_* variables for the services."""
        self.bundle = bundle
        self.device = device
        # The model services take calls only with the internal token: give `up` a known one.
        self.token_file = Path(tempfile.mkdtemp(prefix="device-check-")) / "internal-token"
        auth.write_token_file(self.token_file)
        args = ["--startup-timeout-s", str(READY_TIMEOUT_S), "--internal-token-file"]
        self.up = Up(bundle, log_path, device, [*args, str(self.token_file)], settings)
        self.url = ""

    def check_ready(self, probe: Probe) -> None:
        started = time.monotonic()
        self.url = self.up.wait_for_url(READY_TIMEOUT_S)
        probe.record(ready_s=time.monotonic() - started, url=self.url)
        probe.require(http_ready(f"{self.url}/health"), "the gateway's /health answers 200")
        needed = services_for(Bundle.load(self.bundle))
        probe.require(sorted(self.up.children()) == sorted(needed), "up: the bundle's services")

    def require_started(self) -> None:
        if not self.url:
            raise RuntimeError("the stack never became ready")

    def check_info_devices(self, probe: Probe) -> None:
        """Each gRPC service's Info names the device the stack was started on."""
        self.require_started()
        stubs = {
            "vision": (vision_pb2_grpc.VisionEncoderStub, encoder_pb2.EncoderInfoRequest()),
            "audio": (audio_pb2_grpc.AudioEncoderStub, encoder_pb2.EncoderInfoRequest()),
            "decoder": (decoder_pb2_grpc.DecoderStub, decoder_pb2.DecoderInfoRequest()),
        }
        token = (("authorization", f"Bearer {auth.read_token(self.token_file)}"),)
        for name, (stub_class, request) in stubs.items():
            with grpc.insecure_channel(self.up.target(name)) as channel:
                info = stub_class(channel).Info(request, timeout=RPC_TIMEOUT_S, metadata=token)
            probe.record(**{f"{name}_device": info.device})
            probe.require(info.device == self.device, f"{name} Info reports {self.device}")

    def check_chat(self, probe: Probe) -> None:
        """One chat completion with an image and an audio clip, through the openai SDK."""
        self.require_started()
        client = openai.OpenAI(base_url=f"{self.url}/v1", api_key="EMPTY", max_retries=0)
        content = [
            {"type": "text", "text": "What do you see and hear?"},
            {"type": "image_url", "image_url": {"url": data_url(image_bytes(seed=3), "image/png")}},
            {
                "type": "input_audio",
                "input_audio": {"data": b64(audio_bytes(1.0, seed=3)), "format": "wav"},
            },
        ]
        started = time.monotonic()
        completion = client.chat.completions.create(
            model=Bundle.load(self.bundle).served_model_name,
            messages=[{"role": "user", "content": content}],  # type: ignore[list-item,misc]
            max_tokens=8,
            temperature=0,
            timeout=120,
        )
        probe.record(latency_s=time.monotonic() - started)
        choice, usage = completion.choices[0], completion.usage
        probe.record(finish_reason=choice.finish_reason)
        probe.require(choice.finish_reason in ("stop", "length"), "the completion finished")
        probe.require(usage is not None, "usage is reported")
        if usage is not None:
            probe.record(
                prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens
            )
            probe.require(usage.completion_tokens >= 1, "at least one token generated")

    def check_gpu_memory(self, probe: Probe) -> None:
        """nvidia-smi's per-process memory (one process cannot see another's CUDA allocations)."""
        result = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        probe.require(result.returncode == 0, f"nvidia-smi ran: {result.stderr.strip()}")
        pids = {str(pid): name for name, pid in self.up.children().items()}
        for line in result.stdout.splitlines()[1:]:  # after the CSV header
            pid, _, used = (part.strip() for part in line.partition(","))
            probe.record(**{f"memory {pids.get(pid, 'pid ' + pid)}": used})

    def check_sigterm(self, probe: Probe) -> None:
        children = self.up.children()
        started = time.monotonic()
        self.up.process.send_signal(signal.SIGTERM)
        code = self.up.wait(STOP_TIMEOUT_S)
        probe.record(exit_code=code, stop_s=time.monotonic() - started)
        probe.require(code == 0, f"up exits 0 on SIGTERM:\n{self.up.log_tail(LOG_TAIL_CHARS)}")
        probe.require("stopped on SIGTERM" in self.up.log, "up says it stopped on SIGTERM")
        left = [name for name, pid in children.items() if alive(pid)]
        probe.require(not left, f"no child left running (left: {left})")


def stack_checks(bundle: Path, device: str, log_path: Path) -> Iterator[Check]:
    stack = LaunchedStack(bundle, device, log_path)
    try:
        yield Check("up: ready", stack.check_ready)
        yield Check("Info devices", stack.check_info_devices)
        yield Check("chat: image + audio", stack.check_chat)
        if device.startswith("cuda") and shutil.which("nvidia-smi"):
            yield Check("GPU memory (nvidia-smi)", stack.check_gpu_memory)
        yield Check("SIGTERM", stack.check_sigterm)
    finally:
        stack.up.kill_everything()
