"""The gateway's /metrics counters that a serving bench cross-checks against what its client
counted."""

from __future__ import annotations

from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

CHAT_ROUTE = "/v1/chat/completions"
# The gateway's counters (prometheus_client adds _total) and what the client counts for each.
COUNTERS = {
    "prompt_tokens": "autoglm_prompt_tokens_total",
    "cached_tokens": "autoglm_cached_prompt_tokens_total",
    "completion_tokens": "autoglm_generation_tokens_total",
}


def scrape(url: str) -> dict[str, float]:
    """The gateway's counters that the bench cross-checks, chat requests answered 200 included."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    values = {name: 0.0 for name in [*COUNTERS.values(), "chat_requests_ok"]}
    ok_chat = {"route": CHAT_ROUTE, "status": "200"}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in values:
                values[sample.name] += sample.value
            if sample.name == "autoglm_http_requests_total" and sample.labels == ok_chat:
                values["chat_requests_ok"] += sample.value
    return values


def cross_check(
    before: dict[str, float], after: dict[str, float], cells: list[dict[str, Any]]
) -> dict[str, Any]:
    """The server's counter deltas beside the client's sums over every measured request."""
    client = {key: sum(c["totals"][key] for c in cells) for key in COUNTERS}
    client["requests"] = sum(c["requests"] for c in cells)
    server = {key: after[name] - before[name] for key, name in COUNTERS.items()}
    server["requests"] = after["chat_requests_ok"] - before["chat_requests_ok"]
    return {"client": client, "server": server, "agree": client == server}
