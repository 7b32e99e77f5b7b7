"""The gateway app in this process, in front of service addresses nobody listens on.

Whatever such a gateway answers with a 4xx was decided before any model service was asked: a
request that reached an encoder or the decoder would fail with 503 instead. So these tests show
what the gateway refuses up front (validation, limits, keys, media budgets) without processes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.config import GatewayConfig
from testkit.processes import free_port

MODEL = "autoglm-phone-9b"


def unserved_config(bundle_dir: Path, **settings: Any) -> GatewayConfig:
    """A gateway config whose three service targets are free (unanswered) loopback ports."""
    targets = {
        f"{name}_target": f"127.0.0.1:{free_port()}" for name in ("vision", "audio", "decoder")
    }
    return dataclasses.replace(
        GatewayConfig(bundle=bundle_dir, device="cpu"), **(targets | settings)
    )


@contextmanager
def in_process(config: GatewayConfig) -> Iterator[TestClient]:
    """The app with its lifespan run (the Gateway built), driven through httpx."""
    with TestClient(create_app(config), raise_server_exceptions=False) as client:
        yield client


def chat_body(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2} | (
        fields
    )
