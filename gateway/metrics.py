"""Prometheus metrics of the gateway, served at GET /metrics: request rates and latencies by
route and status, time to first token, and token and media counts, as vLLM and TGI users
scrape them, plus the decoder's state (running and waiting requests, KV cache usage, prefix
cache, preemptions) read from its Info at each scrape. One registry per app (not the
process-global one), so nothing is registered at import time and two apps in one process do not
collide."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator
from typing import TypeVar

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.events import Counts
from services.decoder.types import DecoderInfo

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
        self.decoder_up = Gauge(
            "autoglm_decoder_up", "1 if the decoder answered Info at this scrape, else 0",
            registry=self.registry,
        )  # fmt: skip
        self.decoder_requests = Gauge(
            "autoglm_decoder_requests", "Requests in the decoder's engine, by state",
            ["state"], registry=self.registry,
        )  # fmt: skip
        self.kv_cache_usage = Gauge(
            "autoglm_decoder_kv_cache_usage_ratio",
            "Share of the KV cache held by requests (prefix-cache blocks nobody uses count free)",
            registry=self.registry,
        )  # fmt: skip
        self.cached_prefix_tokens = Gauge(
            "autoglm_decoder_cached_prefix_tokens",
            "Tokens in KV cache blocks a later prompt may reuse", registry=self.registry,
        )  # fmt: skip
        self.preemptions = Gauge(
            "autoglm_decoder_preemptions",
            "Requests preempted for lack of KV cache since the decoder started",
            registry=self.registry,
        )  # fmt: skip

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

    def observe_decoder(self, info: DecoderInfo | None) -> None:
        """The decoder's state as its Info gave it just now; None: it did not answer."""
        self.decoder_up.set(info is not None)
        if info is None:
            return
        self.decoder_requests.labels(state="running").set(info.running_requests)
        self.decoder_requests.labels(state="waiting").set(info.waiting_requests)
        self.kv_cache_usage.set(1 - info.free_cache_tokens / max(info.total_cache_tokens, 1))
        self.cached_prefix_tokens.set(info.cached_prefix_tokens)
        self.preemptions.set(info.preemptions)

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
