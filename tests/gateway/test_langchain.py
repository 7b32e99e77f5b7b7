"""langchain-openai's ChatOpenAI, configured as the design source's client configures it."""

from __future__ import annotations

from typing import Literal

import pytest
from langchain_core.messages import AIMessageChunk, HumanMessage
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field

from testkit.media import data_url, image_bytes
from tests.conftest import Stack
from tests.gateway.conftest import MODEL

pytestmark = pytest.mark.stack  # every test here talks to service processes


def chat_model(stack: Stack, **extra: object) -> ChatOpenAI:
    return ChatOpenAI(
        model=MODEL,
        base_url=stack.base_url,
        api_key="EMPTY",  # type: ignore[arg-type]
        temperature=0.5,
        streaming=True,
        max_tokens=8,  # type: ignore[call-arg]
        extra_body={"enable_thinking": True, "return_reasoning": True} | extra,
    )


def test_invoke_and_stream_text(stack: Stack) -> None:
    llm = chat_model(stack)
    reply = llm.invoke("Open the settings app.")
    assert isinstance(reply.content, str)
    chunks = list(llm.stream("Open the settings app."))
    assert chunks and all(isinstance(c, AIMessageChunk) for c in chunks)


def test_invoke_and_stream_with_an_image(stack: Stack) -> None:
    message = HumanMessage(
        content=[
            {"type": "text", "text": "What is on the screen?"},
            {"type": "image_url", "image_url": {"url": data_url(image_bytes(), "image/png")}},
        ]
    )
    llm = chat_model(stack)
    reply = llm.invoke([message])
    assert isinstance(reply.content, str) and reply.response_metadata["finish_reason"]
    # with stream_usage, langchain asks for include_usage and reads the final usage chunk
    counted = chat_model(stack, ignore_eos=True).model_copy(update={"stream_usage": True})
    usage = counted.invoke([message]).usage_metadata
    assert usage is not None and usage["input_tokens"] > 64  # the image's placeholder tokens
    assert list(llm.stream([message]))


def test_inline_reasoning_reaches_langchain_users(stack: Stack) -> None:
    """langchain drops reasoning_content; keep_reasoning_inline puts it in the content."""
    llm = chat_model(stack, keep_reasoning_inline=True, ignore_eos=True)
    text = "".join(str(chunk.content) for chunk in llm.stream("Think first."))
    assert text.startswith("<think>")


class Plan(BaseModel):
    """What the agent will do."""

    app: Literal["Maps", "Settings", "Camera"]
    steps: int = Field(ge=1, le=9)


@pytest.mark.parametrize("seed", [0, 1])
def test_with_structured_output_gives_the_schema_even_from_random_weights(
    stack: Stack, seed: int
) -> None:
    llm = ChatOpenAI(
        model=MODEL, base_url=stack.base_url, api_key="EMPTY",  # type: ignore[arg-type]
        temperature=1.0, seed=seed, max_tokens=120,  # type: ignore[call-arg]
    )  # fmt: skip
    plan = llm.with_structured_output(Plan, method="json_schema").invoke("Open the maps.")
    assert isinstance(plan, Plan)
