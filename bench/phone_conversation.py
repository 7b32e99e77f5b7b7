"""Open-AutoGLM's PhoneAgent conversation as the phone benchmark sends it (bench/phone_agent.py).

PhoneAgent (phone_agent/agent.py, v0.1.1): the system prompt, then per turn a user message with
the new screenshot first and then the task (first turn) or the screen info, sent with
ModelClient's sampling; after the answer, MessageBuilder.remove_images_from_message drops the
screenshot from that user message. Every client and turn gets its own screen. ``Reuse``: how
much of each prompt the decoder's prefix cache can serve.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from openai.types.chat import ChatCompletionMessageParam, ChatCompletionUserMessageParam

from bench.chat_requests import SYSTEM_PROMPT
from bench.chat_stream import Sampling
from bundle.layout import Bundle
from services.decoder.config import DecoderConfig
from testkit.media import b64, image_bytes

SCREEN = (1080, 2400)  # a phone screenshot, width x height
WARM_UP_SCREEN = (280, 280)  # lazy start-up costs paid without a full screenshot's minute
APPS = ("WeChat", "Meituan", "Taobao", "Amap", "Settings", "Chrome", "Xiaohongshu", "Bilibili")
TASKS = (
    "Open Meituan and search for hot pot restaurants nearby.",
    "Send 'I will be late' to Li Wei on WeChat.",
    "Find a phone case under 50 yuan on Taobao and add it to the cart.",
    "Navigate to Hangzhou East station in Amap.",
    "Turn on dark mode in Settings.",
    "Search Chrome for tomorrow's weather in Beijing.",
    "Save the top post about coffee shops on Xiaohongshu.",
    "Play the latest video of a followed channel on Bilibili.",
)
# PhoneAgent's sampling (phone_agent.model.ModelConfig defaults); max_tokens is the bench's.
SAMPLING = Sampling(temperature=0.0, top_p=0.85, frequency_penalty=0.2)
Messages = list[ChatCompletionMessageParam]


def screenshot_url(client: int, turn: int, size: tuple[int, int] = SCREEN) -> str:
    """A different screen for every client and turn (its own shapes and colours)."""
    return f"data:image/png;base64,{b64(image_bytes('PNG', size, seed=client * 1000 + turn))}"


def user_message(
    task: str, client: int, turn: int, screenshot: str
) -> ChatCompletionUserMessageParam:
    """PhoneAgent's user message: the screenshot first, then the task (first turn) or the
    screen-info header, with the screen info as JSON (MessageBuilder.build_screen_info)."""
    info = json.dumps({"current_app": APPS[(client + turn) % len(APPS)]}, ensure_ascii=False)
    text = f"{task}\n\n{info}" if turn == 0 else f"** Screen Info **\n\n{info}"
    return {
        "role": "user",
        "content": [
            {"type": "image_url", "image_url": {"url": screenshot}},
            {"type": "text", "text": text},
        ],
    }


def without_images(message: ChatCompletionUserMessageParam) -> ChatCompletionUserMessageParam:
    """MessageBuilder.remove_images_from_message: only the text parts stay."""
    content = message["content"]
    if isinstance(content, str):
        return message
    return {"role": "user", "content": [p for p in content if p["type"] == "text"]}


def first_turn_messages(client: int, screenshot: str) -> Messages:
    task = TASKS[client % len(TASKS)]
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        user_message(task, client, 0, screenshot),
    ]


@dataclasses.dataclass(frozen=True)
class Reuse:
    """The prompt tokens the decoder's prefix cache can serve, from the prompts' ids alone:
    the common prefix with the prompt before, up to the prompt's first image (a new screenshot
    is never cached, though its placeholder ids equal any other image's), in whole blocks,
    short of the last token (whose logits the decoder computes)."""

    block_size: int
    image_token: int

    @classmethod
    def for_bundle(cls, bundle: Path) -> Reuse:
        config = json.loads((Bundle.load(bundle).decoder / "config.json").read_text())
        return cls(DecoderConfig().kv_block_size, int(config["image_token_id"]))

    def tokens(self, prompt: list[int], before: list[int]) -> int:
        common = 0
        for a, b in zip(prompt[: len(prompt) - 1], before, strict=False):
            if a != b or a == self.image_token:
                break
            common += 1
        return common // self.block_size * self.block_size
