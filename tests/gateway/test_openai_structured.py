"""Constrained output and sampling parity through the openai SDK on the served default bundle
(random weights), issue 13 points 1, 3 and 4: JSON that parses and validates over several seeds,
streamed and not, also after free thinking; one phone-agent step that Open-AutoGLM's own parser
reads; a +100 logit_bias that selects its token every step."""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from phone_agent.actions.handler import parse_action
from phone_agent.model.client import ModelClient, ModelConfig

from tests.conftest import Stack
from tests.gateway.conftest import MODEL

pytestmark = pytest.mark.stack  # every test here talks to service processes

SCHEMA = {
    "type": "object",
    "properties": {
        "app": {"type": "string", "enum": ["Maps", "Settings", "Camera"]},
        "steps": {"type": "integer", "minimum": 1, "maximum": 9},
        "confirm": {"type": "boolean"},
    },
    "required": ["app", "steps", "confirm"],
    "additionalProperties": False,
}
ASK = [{"role": "user", "content": "Which app, how many steps, confirm?"}]


def json_schema_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "json_schema",
        "json_schema": {"name": "plan", "schema": schema, "strict": True},
    }


def complete(client: openai.OpenAI, stream: bool, **fields: Any) -> tuple[str, str | None]:
    """The content and finish reason, streamed or not."""
    body = {"model": MODEL, "messages": ASK, "max_tokens": 120, "temperature": 1.0} | fields
    if not stream:
        choice = client.chat.completions.create(**body).choices[0]
        return choice.message.content or "", choice.finish_reason
    content, finish = "", None
    for chunk in client.chat.completions.create(**body, stream=True):
        for part in chunk.choices:
            content += part.delta.content or ""
            finish = part.finish_reason or finish
    return content, finish


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_json_schema_answers_parse_and_validate(
    client: openai.OpenAI, seed: int, stream: bool
) -> None:
    content, finish = complete(
        client, stream, seed=seed, response_format=json_schema_format(SCHEMA)
    )
    assert finish == "stop", content
    jsonschema.validate(json.loads(content), SCHEMA)


def test_json_object_answers_are_objects(client: openai.OpenAI) -> None:
    """Any object: random weights may write keys and strings past max_tokens, which says so."""
    fields = {"response_format": {"type": "json_object"}, "max_tokens": 300}
    for seed in range(3):
        content, finish = complete(client, False, seed=seed, **fields)
        assert content.lstrip().startswith("{")
        assert finish == "length" or isinstance(json.loads(content), dict), content


def test_with_thinking_the_answer_after_the_reasoning_validates(client: openai.OpenAI) -> None:
    extra = {"enable_thinking": True, "return_reasoning": True}
    body = {"model": MODEL, "messages": ASK, "max_tokens": 200, "seed": 4, "extra_body": extra}
    # the bias makes </think> likely so that random weights end their reasoning early
    end_think = tokenize(client, "</think>")
    choice = client.chat.completions.create(
        **body, response_format=json_schema_format(SCHEMA), logit_bias={str(end_think): 8}
    ).choices[0]
    assert choice.finish_reason == "stop"
    jsonschema.validate(json.loads(choice.message.content or ""), SCHEMA)


def tokenize(client: openai.OpenAI, text: str) -> int:
    """The first token of ``text`` (/tokenize)."""
    root = str(client.base_url).removesuffix("/").removesuffix("/v1")
    return int(httpx.post(f"{root}/tokenize", json={"prompt": text}).json()["tokens"][0])


def detokenize(client: openai.OpenAI, ids: list[int]) -> str:
    root = str(client.base_url).removesuffix("/").removesuffix("/v1")
    return str(httpx.post(f"{root}/detokenize", json={"tokens": ids}).json()["prompt"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_phone_action_grammar_gives_steps_open_autoglm_parses(
    client: openai.OpenAI, stack: Stack, seed: int
) -> None:
    content, finish = complete(
        client, True, seed=seed, max_tokens=200, extra_body={"action_grammar": "autoglm-phone"}
    )
    assert finish == "stop", content
    agent = ModelClient(ModelConfig(base_url=stack.base_url, model_name=MODEL))
    _, action = agent._parse_response(content)
    assert parse_action(action)["_metadata"] in ("do", "finish")


def test_a_plus_100_logit_bias_selects_its_token_every_step(client: openai.OpenAI) -> None:
    token = tokenize(client, "Maps")
    reply = client.chat.completions.create(
        model=MODEL, messages=ASK, max_tokens=6, temperature=1.0, seed=5,
        logit_bias={str(token): 100}, logprobs=True,
    )  # fmt: skip
    logprobs = reply.choices[0].logprobs
    assert logprobs is not None and logprobs.content is not None
    text = detokenize(client, [token])
    assert [t.token for t in logprobs.content] == [text] * 6
    assert reply.choices[0].message.content == text * 6
