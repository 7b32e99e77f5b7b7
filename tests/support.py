"""Starting real service processes on free loopback ports, for end-to-end tests."""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from services.common.health import AUDIO_SERVICE, DECODER_SERVICE, VISION_SERVICE, is_serving

HEALTH_NAMES = {"vision": VISION_SERVICE, "audio": AUDIO_SERVICE, "decoder": DECODER_SERVICE}
START_TIMEOUT_S = 180.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def alive(pid: int) -> bool:
    """Running, and not a zombie waiting to be reaped."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie has exited; it only waits for its (new) parent to read its status.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")


@dataclasses.dataclass
class ServiceProcess:
    kind: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def ready(self) -> bool:
        if self.kind == "gateway":
            try:
                return httpx.get(f"{self.url}/health", timeout=1.0).status_code == 200
            except httpx.HTTPError:
                return False
        import asyncio

        import grpc

        async def check() -> bool:
            async with grpc.aio.insecure_channel(self.target) as channel:
                return await is_serving(channel, HEALTH_NAMES[self.kind])

        return asyncio.run(check())

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.kind} exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            if self.ready():
                return
            time.sleep(0.25)
        raise TimeoutError(f"{self.kind} not ready after {timeout}s:\n{self.log_tail()}")

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def spawn(
    kind: str,
    bundle: Path,
    log_dir: Path,
    args: Sequence[str] = (),
    port: int | None = None,
) -> ServiceProcess:
    """Start `autoglm serve KIND` on a free port; call wait_ready() before using it."""
    port = port or free_port()
    log_path = log_dir / f"{kind}-{port}.log"
    command = [sys.executable, "-m", "services.cli", "serve", kind, "--port", str(port)]
    command += ["--bundle", str(bundle), *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOGLM_")}
    env["PYTHONUNBUFFERED"] = "1"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    return ServiceProcess(kind=kind, port=port, proc=proc, log_path=log_path)
