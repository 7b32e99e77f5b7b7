"""GET /metrics: Prometheus counters that move by exactly what each request did."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.clients import ServiceClients
from gateway.config import GatewayConfig
from gateway.metrics import Metrics
from testkit.media import data_url, image_bytes
from testkit.processes import free_port
from tests.conftest import Stack
from tests.gateway.conftest import MODEL

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(stack: Stack) -> Samples:
    reply = httpx.get(f"{stack.gateway.url}/metrics", timeout=10)
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(reply.text)
        for sample in family.samples
    }


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def hi_with_an_image(seed: int) -> list[dict[str, Any]]:
    url = data_url(image_bytes(seed=seed), "image/png")
    image = {"type": "image_url", "image_url": {"url": url}}
    return [{"role": "user", "content": [{"type": "text", "text": "hi"}, image]}]


@pytest.mark.stack
def test_counters_follow_a_chat_request(stack: Stack, client: openai.OpenAI) -> None:
    messages = hi_with_an_image(seed=7)
    client.chat.completions.create(model=MODEL, messages=messages, max_tokens=5)  # type: ignore[arg-type]
    before = scrape(stack)
    # the same again: its prompt's full blocks now come from the decoder's prefix cache
    completion = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=5)  # type: ignore[arg-type]
    after = scrape(stack)
    usage = completion.usage
    assert usage is not None and usage.prompt_tokens_details is not None
    cached = usage.prompt_tokens_details.cached_tokens
    assert cached and delta(before, after, "autoglm_cached_prompt_tokens_total") == cached

    route = "/v1/chat/completions"
    assert delta(before, after, "autoglm_http_requests_total", route=route, status="200") == 1
    assert delta(before, after, "autoglm_prompt_tokens_total") == usage.prompt_tokens
    assert delta(before, after, "autoglm_generation_tokens_total") == usage.completion_tokens
    image_tokens = usage.prompt_tokens_details.model_dump()["image_tokens"]
    assert delta(before, after, "autoglm_media_tokens_total", kind="image") == image_tokens
    assert delta(before, after, "autoglm_time_to_first_token_seconds_count") == 1


@pytest.mark.stack
def test_errors_are_counted_under_their_route_and_status(stack: Stack) -> None:
    before = scrape(stack)
    httpx.get(f"{stack.base_url}/models/not-a-model", timeout=10)
    after = scrape(stack)
    route = "/v1/models/{model_id}"
    assert delta(before, after, "autoglm_http_requests_total", route=route, status="404") == 1


@pytest.mark.stack
def test_the_decoder_state_is_read_at_each_scrape(stack: Stack, client: openai.OpenAI) -> None:
    messages = hi_with_an_image(seed=8)
    client.chat.completions.create(model=MODEL, messages=messages, max_tokens=2)  # type: ignore[arg-type]
    samples = scrape(stack)
    assert samples[("autoglm_decoder_up", ())] == 1
    running = samples[("autoglm_decoder_requests", (("state", "running"),))]
    waiting = samples[("autoglm_decoder_requests", (("state", "waiting"),))]
    assert running >= 0 and waiting >= 0
    assert 0 <= samples[("autoglm_decoder_kv_cache_usage_ratio", ())] <= 1
    assert samples[("autoglm_decoder_preemptions", ())] >= 0
    # the chat left its prompt's full blocks in the prefix cache
    assert samples[("autoglm_decoder_cached_prefix_tokens", ())] > 0


async def test_a_decoder_that_does_not_answer_is_reported_down() -> None:
    config = GatewayConfig(decoder_target=f"127.0.0.1:{free_port()}")  # nothing listens there
    clients = ServiceClients(config)
    try:
        state = await clients.decoder_state(timeout=2)
    finally:
        await clients.close()
    assert state is None
    metrics = Metrics()
    metrics.observe_decoder(state)
    assert b"autoglm_decoder_up 0.0" in metrics.exposition()
