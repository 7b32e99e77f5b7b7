"""API keys, checked before anything reads the request body.

A raw ASGI middleware, outermost, so an unauthenticated client gets its 401 whatever it sends:
a body is neither received nor parsed for it (a malformed body without a key is a 401, not a
400). ``/metrics`` needs the metrics key and every other path the API key (``/v1/*``,
``/tokenize``, ``/detokenize``, any route added later): closed unless listed in
``OPEN_PATHS``, ``/health`` and the OpenAPI document (probes and discovery). An empty key
leaves its paths open.
"""

from __future__ import annotations

import secrets

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import AuthenticationFailed, map_exception

OPEN_PATHS = frozenset({"/health", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})


def bearer_matches(authorization: bytes, key: str) -> bool:
    scheme, _, given = authorization.decode("latin-1").partition(" ")
    return scheme.lower() == "bearer" and secrets.compare_digest(given.encode(), key.encode())


class ApiKeys:
    def __init__(self, app: ASGIApp, api_key: str, metrics_api_key: str) -> None:
        self.app = app
        self.api_key = api_key
        self.metrics_api_key = metrics_api_key

    def key_for(self, path: str) -> str:
        if path in OPEN_PATHS:
            return ""
        return self.metrics_api_key if path == "/metrics" else self.api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key = self.key_for(scope["path"]) if scope["type"] == "http" else ""
        if key and not bearer_matches(dict(scope["headers"]).get(b"authorization", b""), key):
            refused = AuthenticationFailed("Incorrect API key provided.")
            await map_exception(refused).response()(scope, receive, send)
            return
        await self.app(scope, receive, send)
