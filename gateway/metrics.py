"""Prometheus metrics of the gateway, served at GET /metrics: request rates and latencies by
route and status, time to first token, and token and media counts, as vLLM and TGI users
scrape them. One registry per app (not the process-global one), so nothing is registered at
import time and two apps in one process do not collide."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator
from typing import TypeVar

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.pipeline import Counts

T = TypeVar("T")
ARRIVED = "autoglm.arrived"  # scope key: time.monotonic() when the request came in
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "autoglm_http_requests", "HTTP requests answered, by route and status",
            ["route", "status"], registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "autoglm_http_request_duration_seconds",
            "Time until the response started (the status line and headers), by route",
            ["route"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.ttft = Histogram(
            "autoglm_time_to_first_token_seconds",
            "From the request's arrival to its first generated output, media encoding included",
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.prompt_tokens = Counter(
            "autoglm_prompt_tokens", "Prompt tokens, media placeholders included",
            registry=self.registry,
        )  # fmt: skip
        self.cached_tokens = Counter(
            "autoglm_cached_prompt_tokens", "Prompt tokens served from the decoder's prefix cache",
            registry=self.registry,
        )  # fmt: skip
        self.media_tokens = Counter(
            "autoglm_media_tokens", "Prompt tokens standing for media, by kind",
            ["kind"], registry=self.registry,
        )  # fmt: skip
        self.generation_tokens = Counter(
            "autoglm_generation_tokens", "Generated tokens", registry=self.registry
        )

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route=route, status=str(status)).inc()
        self.latency.labels(route=route).observe(seconds)

    async def track(
        self, events: AsyncGenerator[T], counts: Counts, started: float
    ) -> AsyncGenerator[T]:
        """Pass ``events`` through, timing the first and counting tokens once they end.
        Closing this closes ``events`` at once (that is what cancels the decoder calls)."""
        first = True
        try:
            async with contextlib.aclosing(events):
                async for event in events:
                    if first:
                        self.ttft.observe(time.monotonic() - started)
                        first = False
                    yield event
        finally:
            self.prompt_tokens.inc(counts.prompt_tokens)
            self.cached_tokens.inc(counts.cached_tokens)
            self.media_tokens.labels(kind="image").inc(counts.image_tokens)
            self.media_tokens.labels(kind="audio").inc(counts.audio_tokens)
            self.generation_tokens.inc(counts.completion_tokens)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class ObserveRequests:
    """ASGI middleware: times every HTTP request until its response starts and counts it under
    its route template (``/v1/models/{model_id}``, not the raw path)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope[ARRIVED] = time.monotonic()

        async def observed(message: Message) -> None:
            if message["type"] == "http.response.start":
                route = getattr(scope.get("route"), "path", "unmatched")
                elapsed = time.monotonic() - scope[ARRIVED]
                self.metrics.observe_request(route, message["status"], elapsed)
            await send(message)

        await self.app(scope, receive, observed)
