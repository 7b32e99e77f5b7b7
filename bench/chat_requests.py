"""The serving benches' chat requests in the phone agent's shape: its long fixed system prompt (so
the decoder's prefix cache has work) and a distinct user task per request, with by mix a
screenshot and a spoken clip."""

from __future__ import annotations

from pathlib import Path

from openai.types.chat import ChatCompletionContentPartParam, ChatCompletionMessageParam

from testkit.media import audio_bytes, b64, data_url, image_bytes

Content = list[ChatCompletionContentPartParam]  # one user message's parts
AUDIO_SECONDS = 2.0

# the phone agent's shape: a long fixed system prompt, so the prefix cache has work
SYSTEM_PROMPT = Path(__file__).with_name("phone_agent_prompt.txt").read_text()

TASKS = (
    "Open the weather app and tell me tomorrow's forecast for {city}.",
    "Find a quiet coffee shop near {city} station on the map and save it.",
    "Book a table for two tonight at an Italian restaurant in {city}.",
    "Send a message to Li Wei saying I will arrive in {city} at seven.",
    "Search the shopping app for a phone case and sort by price, shipping to {city}.",
    "Set an alarm for six thirty and name it flight to {city}.",
    "Play the latest episode of the news podcast about {city}.",
    "Turn on dark mode in settings, then look up train times to {city}.",
)
CITIES = ("Beijing", "Shanghai", "Hangzhou", "Shenzhen", "Chengdu", "Wuhan", "Xi'an", "Nanjing")


def user_content(mix: str, index: int) -> Content:
    """A distinct task (and, by mix, a distinct screenshot and spoken clip) per ``index``."""
    task = TASKS[index % len(TASKS)].format(city=CITIES[index // len(TASKS) % len(CITIES)])
    parts: Content = [{"type": "text", "text": f"Task #{index}: {task}"}]
    if "image" in mix:
        screen = data_url(image_bytes(size=(224, 224), seed=index), "image/png")
        parts.append({"type": "image_url", "image_url": {"url": screen}})
    if "audio" in mix:
        clip = b64(audio_bytes(AUDIO_SECONDS, seed=index % 8))
        parts.append({"type": "input_audio", "input_audio": {"data": clip, "format": "wav"}})
    return parts


def first_turn(content: Content) -> list[ChatCompletionMessageParam]:
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": content}]
