"""What a request may choose is bounded before any work (issue 11, points 1 and 2): only
documented template kwargs, no request-supplied template, every number within what the
decoder's protobuf fields hold, text/messages/tools within the configured sizes, the API key
checked before the body is read, /metrics behind its own key, compressed bodies refused. Each
case is a 4xx with OpenAI's error shape, the field named, no exception text (never a 500)."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from tests.gateway.in_process import chat_body, in_process, unserved_config

KEY, METRICS_KEY = "sk-guards", "sk-scraper"
AUTH = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}


@pytest.fixture(scope="module")
def app(bundle_dir: Path) -> Iterator[TestClient]:
    config = unserved_config(
        bundle_dir,
        api_key=KEY,
        metrics_api_key=METRICS_KEY,
        max_messages=4,
        max_text_chars=1000,
        max_tool_bytes=2000,
    )
    with in_process(config) as client:
        yield client


def post(app: TestClient, body: Any, path: str = "/v1/chat/completions", **kw: Any) -> Any:
    headers = AUTH | kw.pop("headers", {})
    return app.post(path, content=json.dumps(body), headers=headers, **kw)


def assert_openai_error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    for leak in ("Traceback", "0x", "Error(", 'File "'):
        assert leak not in error["message"]
    return dict(error)


TEMPLATE = "{{ raise_exception('x') }}{% for m in messages %}{{ m.content }}{% endfor %}"
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        # the cases issue 11 reports (500 or a silently used template before)
        ({"top_k": 3_000_000_000}, "top_k"),
        ({"stop_token_ids": [2_147_483_648]}, "stop_token_ids.0"),
        ({"stop_token_ids": [-1]}, "stop_token_ids.0"),
        ({"chat_template_kwargs": {"continue_final_message": True}}, "chat_template_kwargs"),
        ({"chat_template_kwargs": {"documents": 5}}, "chat_template_kwargs"),
        ({"chat_template_kwargs": {"chat_template": TEMPLATE}}, "chat_template_kwargs"),
        ({"chat_template_kwargs": {"enable_thinking": "yes"}}, "chat_template_kwargs"),
        ({"chat_template": TEMPLATE}, "chat_template"),
        # every other number at the edge of what it travels as
        ({"seed": 1 << 64}, "seed"),
        ({"seed": -(1 << 63) - 1}, "seed"),
        ({"max_tokens": 1 << 32}, "max_tokens"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
        ({"n": 9}, "n"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"temperature": 1e308 * 10}, "temperature"),  # inf in Python's JSON
        ({"presence_penalty": -3}, "presence_penalty"),
        ({"user": "u" * 1000}, "user"),
        # the configured sizes: messages, text, tool arguments
        ({"messages": MESSAGES * 5}, "messages"),
        ({"messages": [{"role": "user", "content": "x" * 1001}]}, "messages"),
        ({"tools": [{"type": "function", "function": {"name": "f", "description": "d" * 2000}}]},
         "tools"),
        (
            {
                "messages": [
                    *MESSAGES,
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {"id": "1", "function": {"name": "f", "arguments": "{}" * 1000}}
                        ],
                    },
                ]
            },
            "tools",
        ),
    ],
)  # fmt: skip
def test_out_of_bounds_fields_are_400_naming_the_field(
    app: TestClient, fields: dict[str, Any], param: str
) -> None:
    error = assert_openai_error(post(app, chat_body(**fields)), 400)
    assert error["type"] == "invalid_request_error" and error["param"] == param


@pytest.mark.parametrize("key", ["continue_final_message", "documents", "chat_template"])
def test_an_undocumented_template_kwarg_is_named_in_the_message(app: TestClient, key: str) -> None:
    error = assert_openai_error(post(app, chat_body(chat_template_kwargs={key: 1})), 400)
    assert repr(key) in error["message"] and "enable_thinking" in error["message"]


def test_the_documented_template_kwarg_passes_validation(app: TestClient) -> None:
    """enable_thinking is accepted: the request gets as far as the (absent) decoder."""
    body = chat_body(chat_template_kwargs={"enable_thinking": True})
    assert_openai_error(post(app, body), 503)


def test_completion_prompts_are_bounded_in_size(app: TestClient) -> None:
    body = {"model": chat_body()["model"], "prompt": "x" * 1001}
    error = assert_openai_error(post(app, body, "/v1/completions"), 400)
    assert error["param"] == "prompt"


@pytest.mark.parametrize("body", [b"{not json", b'{"model": 5}', b""])
def test_the_key_is_checked_before_the_body_is_read(app: TestClient, body: bytes) -> None:
    without_key = app.post("/v1/chat/completions", content=body)
    assert assert_openai_error(without_key, 401)["type"] == "authentication_error"
    wrong_key = {"Authorization": "Bearer sk-wrong"}
    assert_openai_error(app.post("/v1/chat/completions", content=body, headers=wrong_key), 401)
    assert_openai_error(app.post("/v1/chat/completions", content=body, headers=AUTH), 400)


@pytest.mark.parametrize("path", ["/v1/models", "/tokenize", "/detokenize", "/v1/nowhere"])
def test_every_path_but_health_and_the_docs_needs_the_key(app: TestClient, path: str) -> None:
    assert_openai_error(app.post(path, content=b"{}"), 401)
    assert app.get("/openapi.json").status_code == 200


def test_an_oversized_body_without_a_key_is_401_not_413(app: TestClient) -> None:
    huge = {"Content-Length": str(1 << 40)}
    assert_openai_error(app.post("/v1/completions", content=b"{}", headers=huge), 401)


def test_metrics_need_their_own_key_and_health_stays_open(app: TestClient) -> None:
    assert_openai_error(app.get("/metrics"), 401)
    assert_openai_error(app.get("/metrics", headers=AUTH), 401)  # the API key is not enough
    scraped = app.get("/metrics", headers={"Authorization": f"Bearer {METRICS_KEY}"})
    assert scraped.status_code == 200 and "autoglm_http_requests_total" in scraped.text
    assert app.get("/health").status_code == 503  # answered (services down), no key needed


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
def test_compressed_bodies_are_refused_with_415(app: TestClient, encoding: str) -> None:
    packed = gzip.compress(json.dumps(chat_body()).encode())
    headers = AUTH | {"Content-Encoding": encoding}
    response = app.post("/v1/chat/completions", content=packed, headers=headers)
    assert assert_openai_error(response, 415)["code"] == "unsupported_content_encoding"
