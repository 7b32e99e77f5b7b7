"""Is a service ready? One check for the launcher, container healthchecks and scripts.

gRPC services answer ``grpc.health.v1`` for their own named service, which stays NOT_SERVING
until the weights are loaded (the overall status "" is SERVING from the start, so the name must
be asked). The gateway answers ``GET /health`` with 200 once all three backends serve.

    python -m services.health_probe localhost:50051 autoglm.v1.VisionEncoder
    python -m services.health_probe http://localhost:8000/health

exits 0 when ready and 1 otherwise.
"""

from __future__ import annotations

import asyncio
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence

import grpc

from services.common.health import AUDIO_SERVICE, DECODER_SERVICE, VISION_SERVICE, is_serving

GRPC_SERVICE_NAMES: dict[str, str] = {
    "vision": VISION_SERVICE,
    "audio": AUDIO_SERVICE,
    "decoder": DECODER_SERVICE,
}


def grpc_ready(target: str, service: str, timeout_s: float = 3.0) -> bool:
    """Whether the named ``service`` at ``target`` reports SERVING."""

    async def check() -> bool:
        async with grpc.aio.insecure_channel(target) as channel:
            return await is_serving(channel, service, timeout=timeout_s)

    return asyncio.run(check())


def http_ready(url: str, timeout_s: float = 3.0) -> bool:
    """Whether ``url`` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):  # HTTPError (a 503) is a URLError
        return False


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) == 1 and args[0].startswith(("http://", "https://")):
        ready = http_ready(args[0])
    elif len(args) == 2:
        ready = grpc_ready(args[0], args[1])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    if not ready:
        print(f"not ready: {' '.join(args)}", file=sys.stderr)
    return 0 if ready else 1


if __name__ == "__main__":
    sys.exit(main())
