"""Open-AutoGLM's own client, unchanged, against the stack serving a GLM-4.1V bundle.

`phone_agent.model.ModelClient` (the `phone-agent` package, installed by `make env`) sends
PhoneAgent's real request: streaming, temperature 0, top_p 0.85, frequency_penalty 0.2, its
ModelConfig's max_tokens, with a screenshot message built by its MessageBuilder. Random weights
never write `<answer>do(...)`, so this checks what does not depend on the weights: the request
goes through the SDK as it is, the stream carries `delta.content`, the client's parser splits that
content by its own rules, and the same request seen through the plain SDK finishes sanely.
"""

from __future__ import annotations

import base64
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from phone_agent.config import SYSTEM_PROMPT_EN
from phone_agent.model.client import MessageBuilder, ModelClient, ModelConfig

from bundle.hf_import import import_checkpoint
from testkit.media import image_bytes
from testkit.processes import Up

pytestmark = pytest.mark.stack

READY_TIMEOUT_S = 300.0
# ModelConfig's own 3000 would hold a random model's answer for minutes on a loaded CPU; the
# cap is set through ModelConfig, so the request is still the one the client builds.
MAX_TOKENS = 200
SCREENSHOT = (1080, 2400)


@pytest.fixture(scope="module")
def served(glm4v_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`autoglm up` on an imported tiny GLM-4.1V bundle; the OpenAI base URL."""
    root = tmp_path_factory.mktemp("phone-agent")
    bundle = import_checkpoint(shutil.copytree(glm4v_checkpoint, root / "checkpoint")).root
    up = Up(bundle, root / "up.log")
    try:
        yield f"{up.wait_for_url(READY_TIMEOUT_S)}/v1"
    finally:
        up.kill_everything()


def phone_agent_messages() -> list[dict[str, Any]]:
    """PhoneAgent's first step: its system prompt, then a screenshot and the task."""
    screenshot = base64.b64encode(image_bytes("PNG", size=SCREENSHOT, seed=7)).decode()
    info = MessageBuilder.build_screen_info("Settings")
    return [
        MessageBuilder.create_system_message(SYSTEM_PROMPT_EN),
        MessageBuilder.create_user_message(
            text=f"Turn on dark mode.\n\n{info}", image_base64=screenshot
        ),
    ]


def test_model_client_streams_and_parses_unchanged(served: str) -> None:
    config = ModelConfig(base_url=served, max_tokens=MAX_TOKENS)  # model: autoglm-phone-9b
    messages = phone_agent_messages()
    answer = ModelClient(config).request(messages)

    assert answer.raw_content, "the stream carried no delta.content"
    assert answer.time_to_first_token is not None
    # The parser's own rules on the raw text: an action marker splits it, else all is action.
    for marker in ("finish(message=", "do(action="):
        if marker in answer.raw_content:
            assert answer.action.startswith(marker)
            assert answer.action in answer.raw_content
            break
    else:
        if "<answer>" not in answer.raw_content:
            assert (answer.thinking, answer.action) == ("", answer.raw_content)

    # The same request through the plain SDK (greedy, so the same text), with its usage.
    stream = openai.OpenAI(base_url=served, api_key="EMPTY").chat.completions.create(
        messages=messages,  # type: ignore[arg-type]
        model=config.model_name,
        max_tokens=config.max_tokens,
        temperature=config.temperature,
        top_p=config.top_p,
        frequency_penalty=config.frequency_penalty,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, finish, usage = "", None, None
    for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    assert text == answer.raw_content
    assert usage is not None and finish in ("stop", "length")
    # The prompt holds the screenshot's image tokens beside the system prompt's text.
    assert usage.prompt_tokens > 500
    assert 0 < usage.completion_tokens <= MAX_TOKENS
    assert (finish == "length") == (usage.completion_tokens == MAX_TOKENS)
