"""API keys, checked before anything reads the request body.

A raw ASGI middleware, outermost, so an unauthenticated client gets its 401 whatever it sends:
a body is neither received nor parsed for it (a malformed body without a key is a 401, not a
400). ``/v1/*``, ``/tokenize`` and ``/detokenize`` need the API key, ``/metrics`` the metrics
key; an empty key leaves its paths open. ``/health`` and the OpenAPI document are always
open (probes and discovery).
"""

from __future__ import annotations

import secrets

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import AuthenticationFailed, map_exception

TOKENIZER_PATHS = frozenset({"/tokenize", "/detokenize"})  # vLLM serves them outside /v1


def bearer_matches(authorization: bytes, key: str) -> bool:
    scheme, _, given = authorization.decode("latin-1").partition(" ")
    return scheme.lower() == "bearer" and secrets.compare_digest(given.encode(), key.encode())


class ApiKeys:
    def __init__(self, app: ASGIApp, api_key: str, metrics_api_key: str) -> None:
        self.app = app
        self.api_key = api_key
        self.metrics_api_key = metrics_api_key

    def key_for(self, path: str) -> str:
        if path == "/v1" or path.startswith("/v1/") or path in TOKENIZER_PATHS:
            return self.api_key
        if path == "/metrics":
            return self.metrics_api_key
        return ""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key = self.key_for(scope["path"]) if scope["type"] == "http" else ""
        if key and not bearer_matches(dict(scope["headers"]).get(b"authorization", b""), key):
            refused = AuthenticationFailed("Incorrect API key provided.")
            await map_exception(refused).response()(scope, receive, send)
            return
        await self.app(scope, receive, send)
