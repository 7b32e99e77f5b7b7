"""`autoglm up`: the whole stack on one machine, one process per service, like compose does.

Starts the services the bundle needs (vision and audio only when it has those encoders) as
``python -m services.cli serve <name>`` processes, prefixes their logs with the service name,
waits until each reports ready (the named gRPC health service, then the gateway's ``/health``),
prints the URL, and then supervises: Ctrl-C or SIGTERM (any number of them) is forwarded to every
child, and when one child dies the others are stopped with a message naming it and ``up`` exits
non-zero.

Only the gateway listens on ``--host``; the model services listen on loopback and take calls
only with the internal token: a random one per run, in a file only the user can read.

This module stays light (no torch, no fastapi): the CLI imports it to build ``up``'s flags.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from typing import IO, ClassVar

from bundle.layout import DEFAULT, Bundle
from services.common import auth
from services.common.config import ServiceConfig, setting
from services.common.grpc_server import SHUTDOWN_GRACE_S
from services.health_probe import GRPC_SERVICE_NAMES, grpc_ready, http_ready
from services.stop_signals import StopSignals

SERVICES = ("vision", "audio", "decoder", "gateway")
ENCODER_PARTS = {"vision": "vision", "audio": "audio"}  # service -> the bundle part it serves
# Only the gateway calls the model services, and it runs on the same machine.
MODEL_SERVICE_HOST = "127.0.0.1"
POLL_S = 0.5
# A child gets the servers' own grace period to drain, plus a little, before it is killed.
STOP_TIMEOUT_S = SHUTDOWN_GRACE_S + 5


@dataclasses.dataclass(frozen=True)
class LauncherConfig(ServiceConfig):
    """Where each service listens and runs: ``host`` is the gateway's (the others stay on
    loopback), ``device`` that of every service left without its own; a token per run if unset."""

    # AUTOGLM_UP_<FIELD> first, then AUTOGLM_<FIELD>: vision_port reads AUTOGLM_VISION_PORT,
    # the same variable `autoglm serve vision` reads.
    ENV_PREFIX: ClassVar[str] = "UP"

    port: int = setting(0, "unused: up takes --vision-port ... --gateway-port instead")
    vision_port: int = setting(50051, "vision gRPC port")
    audio_port: int = setting(50052, "audio gRPC port")
    decoder_port: int = setting(50053, "decoder gRPC port")
    gateway_port: int = setting(8000, "gateway HTTP port")
    vision_device: str = setting("", "empty: --device")
    audio_device: str = setting("", "empty: --device")
    decoder_device: str = setting("", "empty: --device")
    gateway_device: str = setting("", "empty: --device")
    decoder_quantization: str = setting(
        "", "decoder weights: gptq, nf4, int8 or none; empty: its default", name="decoder_quant"
    )
    startup_timeout_s: float = setting(600.0, "how long the stack may take to become ready")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.port != 0:
            raise ValueError(
                "autoglm up listens on four ports: set --vision-port, --audio-port, "
                "--decoder-port or --gateway-port instead of --port"
            )
        ports = [self.port_of(name) for name in SERVICES]
        for name, port in zip(SERVICES, ports, strict=True):
            if not 1 <= port <= 65535:
                raise ValueError(f"{name}_port must be in 1..65535, got {port}")
        if len(set(ports)) != len(ports):
            raise ValueError(f"the four services need four different ports, got {ports}")
        for name in SERVICES:
            # The base class holds the one rule for a valid device name.
            ServiceConfig(device=self.device_of(name))
        if self.startup_timeout_s <= 0:
            raise ValueError("startup_timeout_s must be positive")
        if self.internal_tls_cert is not None or self.internal_tls_ca is not None:
            message = "internal TLS is for `autoglm serve` across machines, not `up` on loopback"
            raise ValueError(message)

    def host_of(self, service: str) -> str:
        return self.host if service == "gateway" else MODEL_SERVICE_HOST

    def port_of(self, service: str) -> int:
        return int(getattr(self, f"{service}_port"))

    def device_of(self, service: str) -> str:
        return str(getattr(self, f"{service}_device")) or self.device

    def target_of(self, service: str) -> str:
        """Where clients reach the service (a wildcard bind address is not an address)."""
        bound = self.host_of(service)
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(bound, bound)
        host = f"[{host}]" if ":" in host else host
        return f"{host}:{self.port_of(service)}"

    @property
    def gateway_url(self) -> str:
        return f"http://{self.target_of('gateway')}"

    def serve_args(self, service: str, decoder_quantization: str = "") -> list[str]:
        """The ``autoglm`` arguments that start one service of this stack; the decoder's
        quantization is the one asked for, else ``decoder_quantization``, else its default."""
        args = [
            "serve", service,
            "--bundle", str(self.bundle),
            "--host", self.host_of(service),
            "--port", str(self.port_of(service)),
            "--device", self.device_of(service),
            "--max-message-mb", str(self.max_message_mb),
            "--log-level", self.log_level,
        ]  # fmt: skip
        if self.internal_token_file is not None:
            args += ["--internal-token-file", str(self.internal_token_file)]
        if service != "gateway" and self.enable_reflection:
            args += ["--enable-reflection"]
        quantization = self.decoder_quantization or decoder_quantization
        if service == "decoder" and quantization:
            args += ["--quant", quantization]
        if service == "gateway":
            for backend in GRPC_SERVICE_NAMES:
                args += [f"--{backend}-target", self.target_of(backend)]
        return args


def services_for(bundle: Bundle) -> tuple[str, ...]:
    """The services a bundle needs: no audio service for a model without an audio encoder."""
    return tuple(s for s in SERVICES if s not in ENCODER_PARTS or bundle.has(ENCODER_PARTS[s]))


def default_decoder_quantization(bundle: Bundle) -> str:
    """An imported checkpoint is served as it is until `autoglm quantize` has made its GPTQ
    checkpoint (quantizing a 9B model takes hours: never unasked); the default bundle keeps
    the decoder's own default."""
    if bundle.architecture == DEFAULT or (bundle.decoder_gptq / "quantize_config.json").is_file():
        return ""
    return "none"


def _exit_reason(code: int) -> str:
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


class Stack:
    """The child processes, their log pumps, and the stop signals."""

    def __init__(
        self, config: LauncherConfig, bundle: Bundle, out: IO[str], signals: StopSignals
    ) -> None:
        self.config = config
        self.services = services_for(bundle)
        self.decoder_quantization = default_decoder_quantization(bundle)
        self.out = out
        self.signals = signals
        self.processes: dict[str, subprocess.Popen[str]] = {}
        self._write_lock = threading.Lock()
        self._pumps: list[threading.Thread] = []

    def say(self, source: str, line: str) -> None:
        with self._write_lock:
            self.out.write(f"{source:<7} | {line.rstrip()}\n")
            self.out.flush()

    def start(self) -> None:
        if not self.config.decoder_quantization and self.decoder_quantization == "none":
            self.say("up", "no GPTQ checkpoint yet (`autoglm quantize`): decoder unquantized")
        for name in self.services:
            args = self.config.serve_args(name, self.decoder_quantization)
            process = subprocess.Popen(
                [sys.executable, "-m", "services.cli", *args],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                bufsize=1,
                env=_child_env(),
                # Its own process group: a terminal's Ctrl-C reaches only the launcher,
                # which forwards it once.
                process_group=0,
            )
            self.processes[name] = process
            pump = threading.Thread(target=self._pump, args=(name, process), daemon=True)
            pump.start()
            self._pumps.append(pump)
            self.say("up", f"started {name} (pid {process.pid})")

    def _pump(self, name: str, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.say(name, line)

    def dead(self) -> tuple[str, int] | None:
        """The first child that has exited, with its exit code."""
        for name, process in self.processes.items():
            code = process.poll()
            if code is not None:
                return name, code
        return None

    def ready(self, service: str) -> bool:
        if service == "gateway":
            return http_ready(f"{self.config.gateway_url}/health", timeout_s=1.0)
        target = self.config.target_of(service)
        return grpc_ready(target, GRPC_SERVICE_NAMES[service], timeout_s=1.0)

    def stop(self, signum: int = signal.SIGTERM) -> None:
        """Signal every child still running, wait for them, kill the ones that hang."""
        running = {n: p for n, p in self.processes.items() if p.poll() is None}
        for process in running.values():
            process.send_signal(signum)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for name, process in running.items():
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.say("up", f"{name} did not stop within {STOP_TIMEOUT_S:.0f} s; killing it")
                process.kill()
                process.wait()
        for pump in self._pumps:
            pump.join(timeout=1.0)


def _child_env() -> dict[str, str]:
    # Unbuffered, so each log line shows up when it is written, not when a buffer fills.
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def _wait_until_ready(stack: Stack) -> int | None:
    """None once every service is ready; an exit code when start-up failed or was stopped."""
    timeout_s = stack.config.startup_timeout_s
    started = time.monotonic()
    waiting = list(stack.services)
    while True:
        # The gateway is ready only after its backends: ask it last, not every round.
        asking = [n for n in waiting if n != "gateway"] or waiting
        for name in [n for n in asking if stack.ready(n)]:
            waiting.remove(name)
            stack.say("up", f"{name} ready after {time.monotonic() - started:.1f} s")
        if not waiting:
            return None
        if (dead := stack.dead()) is not None:
            return _report_death(stack, *dead)
        if time.monotonic() - started > timeout_s:
            _fail(stack, f"{', '.join(waiting)} not ready after {timeout_s:.0f} s; stopping")
            return 1
        if stack.signals.wait(POLL_S):
            return 0


def _supervise(stack: Stack) -> int:
    """Wait for a stop request or a dead child."""
    while not stack.signals.wait(POLL_S):
        if (dead := stack.dead()) is not None:
            return _report_death(stack, *dead)
    return 0


def _report_death(stack: Stack, name: str, code: int) -> int:
    others = [n for n, p in stack.processes.items() if n != name and p.poll() is None]
    _fail(stack, f"{name} {_exit_reason(code)}; stopping {', '.join(others) or 'nothing'}")
    return 1


def _fail(stack: Stack, message: str) -> None:
    stack.out.flush()  # so the message comes after the log lines that led to it
    print(f"autoglm up: {message}", file=sys.stderr, flush=True)


def run(config: LauncherConfig) -> int:
    """Start the stack, print its URL when ready, and run until stopped or a child dies."""
    try:
        bundle = Bundle.load(config.bundle)
    except (FileNotFoundError, ValueError) as exc:
        print(f"autoglm up: {exc}", file=sys.stderr)
        return 2
    with StopSignals() as signals, auth.token_file(config.internal_token_file) as token:
        config = dataclasses.replace(config, internal_token_file=token)
        stack = Stack(config, bundle, sys.stdout, signals)
        try:
            stack.start()
            code = _wait_until_ready(stack)
            if code is None:
                stack.say(
                    "up", f"{bundle.served_model_name} is being served at {config.gateway_url}"
                )
                stack.say("up", f"OpenAI base URL: {config.gateway_url}/v1 (Ctrl-C stops)")
                code = _supervise(stack)
        finally:
            stack.stop(signals.received or signal.SIGTERM)
    if signals.received is not None:
        stack.say("up", f"stopped on {signal.Signals(signals.received).name}")
    return code
