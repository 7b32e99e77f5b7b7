"""bench/serve.py --mix phone: the conversation is PhoneAgent's, and turns are summarized over
the clients."""

from __future__ import annotations

from phone_agent.model.client import MessageBuilder

from bench.phone_agent import summarize_turns, user_message, without_images
from bench.serve import Sample


def sample(ttft_s: float, prompt: int = 4000, cached: int = 700) -> Sample:
    return Sample(ttft_s, None, ttft_s + 1, prompt, cached, 4)


def test_earlier_screenshots_are_dropped_as_phone_agent_drops_them() -> None:
    message = user_message(
        "Open Settings.", client=0, turn=1, screenshot="data:image/png;base64,AA"
    )
    parts = list(message["content"])
    assert [p["type"] for p in parts] == ["image_url", "text"]  # PhoneAgent's order
    theirs = MessageBuilder.remove_images_from_message({"role": "user", "content": parts})
    assert without_images(message) == theirs
    assert theirs["content"][0]["text"].startswith("** Screen Info **")  # a later turn's header


def test_turns_are_the_median_over_clients() -> None:
    runs = [
        [sample(10.0), sample(12.0)],
        [sample(20.0), sample(30.0)],
        [sample(11.0), sample(14.0)],
    ]
    cell = summarize_turns(3, runs)
    assert [t["ttft_p50_s"] for t in cell["turns"]] == [11.0, 14.0]
    assert [t["ttft_max_s"] for t in cell["turns"]] == [20.0, 30.0]
    assert cell["last_vs_first_ttft"] == 14.0 / 11.0
    assert cell["requests"] == 6 and cell["totals"]["completion_tokens"] == 24
