"""Tool calls through the openai SDK and langchain's bind_tools on the served default bundle
(random weights), issue 13 point 2: a required or named tool_choice returns valid calls, streamed
and not, one or several; tool results in later turns render and answer."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import openai
import pytest
from langchain_openai import ChatOpenAI

from tests.conftest import Stack
from tests.gateway.conftest import MODEL
from tests.gateway.test_tools import TAP, WEATHER

pytestmark = pytest.mark.stack  # every test here talks to service processes

ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
SCHEMA = WEATHER["function"]["parameters"]
NAMED = {"type": "function", "function": {"name": "get_weather"}}


def call(client: openai.OpenAI, stream: bool, **fields: Any) -> tuple[list[Any], str | None]:
    """The calls as (name, arguments) and the finish reason, streamed or not."""
    body = {"model": MODEL, "messages": ASK, "tools": [WEATHER, TAP], "max_tokens": 100} | fields
    if not stream:
        choice = client.chat.completions.create(**body).choices[0]
        calls = choice.message.tool_calls or []
        assert choice.message.content is None
        return [(c.function.name, json.loads(c.function.arguments)) for c in calls], (
            choice.finish_reason
        )
    parts: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in client.chat.completions.create(**body, stream=True):
        for choice in chunk.choices:
            assert not choice.delta.content
            for delta in choice.delta.tool_calls or ():
                part = parts.setdefault(delta.index, {"name": "", "arguments": ""})
                assert delta.function is not None
                part["name"] += delta.function.name or ""
                part["arguments"] += delta.function.arguments or ""
            finish = choice.finish_reason or finish
    return [(p["name"], json.loads(p["arguments"])) for _, p in sorted(parts.items())], finish


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_a_named_tool_choice_returns_a_valid_call(
    client: openai.OpenAI, seed: int, stream: bool
) -> None:
    calls, finish = call(client, stream, seed=seed, tool_choice=NAMED)
    assert finish == "tool_calls" and len(calls) == 1
    name, arguments = calls[0]
    assert name == "get_weather"
    jsonschema.validate(arguments, SCHEMA)


@pytest.mark.parametrize("stream", [False, True])
def test_required_returns_calls_of_offered_tools(client: openai.OpenAI, stream: bool) -> None:
    calls, finish = call(client, stream, seed=2, tool_choice="required", max_tokens=200)
    assert finish == "tool_calls" and calls
    for name, arguments in calls:
        assert name in ("get_weather", "tap")
        if name == "get_weather":
            jsonschema.validate(arguments, SCHEMA)


def test_without_parallel_calls_required_returns_one(client: openai.OpenAI) -> None:
    fields = {"tool_choice": "required", "parallel_tool_calls": False, "seed": 3}
    calls, finish = call(client, False, **fields)
    assert finish == "tool_calls" and len(calls) == 1


def test_tool_results_in_later_turns(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER], tool_choice=NAMED, max_tokens=100, seed=4  # type: ignore[list-item,arg-type]
    ).choices[0].message  # fmt: skip
    assert first.tool_calls
    turns = [
        *ASK,
        first.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": first.tool_calls[0].id, "content": "sunny, 21 C"},
    ]
    reply = client.chat.completions.create(
        model=MODEL, messages=turns, tools=[WEATHER], tool_choice="none", max_tokens=8  # type: ignore[arg-type,list-item]
    )  # fmt: skip
    choice = reply.choices[0]
    assert choice.finish_reason in ("stop", "length") and choice.message.tool_calls is None
    assert reply.usage is not None and reply.usage.prompt_tokens > 20


def test_langchain_bind_tools_gets_parsed_calls(stack: Stack) -> None:
    llm = ChatOpenAI(
        model=MODEL, base_url=stack.base_url, api_key="EMPTY",  # type: ignore[arg-type]
        temperature=1.0, seed=5, max_tokens=100,  # type: ignore[call-arg]
    )  # fmt: skip
    reply = llm.bind_tools([WEATHER], tool_choice="get_weather").invoke("Weather in Paris?")
    assert [c["name"] for c in reply.tool_calls] == ["get_weather"]  # type: ignore[attr-defined]
    jsonschema.validate(reply.tool_calls[0]["args"], SCHEMA)  # type: ignore[attr-defined]
