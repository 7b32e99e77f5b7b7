"""Real processes on free loopback ports: one service (`autoglm serve KIND`) or the whole stack
(`autoglm up`), each with its output in a log file, for the tests and the device check."""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from services.health_probe import GRPC_SERVICE_NAMES, grpc_ready, http_ready
from services.launcher import SERVICES

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 180.0
LOG_TAIL_CHARS = 4000


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


def autoglm(
    arguments: Sequence[str], log_path: Path, settings: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """`python -m services.cli ARGUMENTS`, configured by its flags and ``settings`` (``AUTOGLM_*``
    variables) alone: the caller's own ``AUTOGLM_*`` variables are left out, so a developer's
    settings cannot leak into a test."""
    settings = dict(settings or {})
    foreign = sorted(name for name in settings if not name.startswith("AUTOGLM_"))
    if foreign:
        raise ValueError(f"settings are AUTOGLM_* variables, got {foreign}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOGLM_")} | settings
    env["PYTHONUNBUFFERED"] = "1"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "services.cli", *arguments]
    with log_path.open("wb") as log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)


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

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def ready(self) -> bool:
        if self.kind == "gateway":
            return http_ready(f"{self.url}/health", timeout_s=1.0)
        return grpc_ready(self.target, GRPC_SERVICE_NAMES[self.kind], timeout_s=1.0)

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
    env: Mapping[str, str] | None = None,
) -> ServiceProcess:
    """Start `autoglm serve KIND` on a free port, with the ``AUTOGLM_*`` settings in ``env``;
    call wait_ready() before using it."""
    port = port or free_port()
    log_path = log_dir / f"{kind}-{port}.log"
    arguments = ["serve", kind, "--port", str(port), "--bundle", str(bundle), *args]
    return ServiceProcess(
        kind=kind, port=port, proc=autoglm(arguments, log_path, env), log_path=log_path
    )


class Up:
    """`autoglm up` on ``device``, every service on its own free loopback port."""

    def __init__(
        self,
        bundle: Path,
        log_path: Path,
        device: str = "cpu",
        args: Sequence[str] = (),
        settings: Mapping[str, str] | None = None,
    ) -> None:
        """``settings``: AUTOGLM_* variables for the services (`up` passes them on)."""
        self.log_path = log_path
        self.ports = {name: free_port() for name in SERVICES}
        arguments = ["up", "--bundle", str(bundle), "--host", "127.0.0.1", "--device", device]
        for name, port in self.ports.items():
            arguments += [f"--{name}-port", str(port)]
        self.process = autoglm([*arguments, *args], log_path, settings)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        return self.log[-chars:]

    def target(self, service: str) -> str:
        return f"127.0.0.1:{self.ports[service]}"

    def children(self) -> dict[str, int]:
        """Each service's pid, as the launcher announced it."""
        return {m[0]: int(m[1]) for m in re.findall(r"started (\w+) \(pid (\d+)\)", self.log)}

    def wait_for_url(self, timeout: float) -> str:
        """The gateway's URL, once the launcher says every service is ready."""
        deadline = time.monotonic() + timeout
        while not (found := re.search(r"is being served at (http://\S+)", self.log)):
            if self.process.poll() is not None:
                raise RuntimeError(f"up exited with {self.process.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no URL after {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.5)
        return found[1]

    def wait(self, timeout: float) -> int:
        """The launcher's exit code, once it has stopped (by a signal sent or on its own)."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(
                f"up still running {timeout:.0f} s later:\n{self.log_tail()}"
            ) from None

    def kill_everything(self) -> None:
        """Whatever happened: leave no process behind."""
        for pid in [self.process.pid, *self.children().values()]:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        self.process.wait()
