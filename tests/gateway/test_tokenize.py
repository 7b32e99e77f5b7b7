"""/tokenize and /detokenize in vLLM's shapes (issue 13, point 5): a prompt or chat messages in,
``{count, max_model_len, tokens}`` out; ids in, ``{prompt}`` out. A chat body is rendered by the
chat completions' own prompt building, so a GLM-4.1V conversation gives transformers' own
input ids, each image counted from its header without any encoder. In process, no services."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from bundle.hf_import import import_checkpoint
from gateway.chat import ChatPrompter
from tests.gateway.in_process import MODEL, in_process, unserved_config
from tests.glm4v import CONVERSATIONS, as_template_messages, reference_inputs

KEY = "sk-tokenize"
AUTH = {"Authorization": f"Bearer {KEY}"}
TEXT = "Open Maps and search for coffee near me, please."


@pytest.fixture(scope="module")
def app(bundle_dir: Path) -> Iterator[TestClient]:
    with in_process(unserved_config(bundle_dir, api_key=KEY)) as client:
        yield client


@pytest.fixture(scope="module")
def glm4v_app(
    glm4v_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    root = tmp_path_factory.mktemp("glm4v-tokenize")
    bundle = import_checkpoint(shutil.copytree(glm4v_checkpoint, root / "checkpoint")).root
    with in_process(unserved_config(bundle)) as client:
        yield client


def post(app: TestClient, path: str, body: dict[str, Any]) -> Any:
    return app.post(path, json=body, headers=AUTH)


def test_a_prompt_round_trips(app: TestClient, bundle_dir: Path) -> None:
    reply = post(app, "/tokenize", {"model": MODEL, "prompt": TEXT, "return_token_strs": True})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert set(body) == {"count", "max_model_len", "tokens", "token_strs"}
    expected = ChatPrompter.from_pretrained(bundle_dir / "decoder").encode_prompt(TEXT)
    assert body["tokens"] == expected and body["count"] == len(expected)
    assert len(body["token_strs"]) == len(expected)
    assert body["max_model_len"] is None  # the decoder does not answer here
    back = post(app, "/detokenize", {"model": MODEL, "tokens": body["tokens"]})
    assert back.status_code == 200 and back.json() == {"prompt": TEXT}


def test_chat_messages_count_as_the_chat_prompt(app: TestClient, bundle_dir: Path) -> None:
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": TEXT}]
    plain = post(app, "/tokenize", {"messages": messages}).json()
    thinking = post(app, "/tokenize", {"messages": messages, "enable_thinking": True}).json()
    assert plain["count"] > len(post(app, "/tokenize", {"prompt": TEXT}).json()["tokens"])
    assert thinking["tokens"] != plain["tokens"]  # the template's thinking switch is honoured
    text = post(app, "/detokenize", {"tokens": plain["tokens"]}).json()["prompt"]
    assert TEXT in text and "be brief" in text  # the template's own tokens are kept


@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_glm4v_images_are_counted_as_transformers_counts_them(
    glm4v_app: TestClient, glm4v_checkpoint: Path, name: str
) -> None:
    messages, images = CONVERSATIONS[name]
    reply = glm4v_app.post("/tokenize", json={"model": MODEL, "messages": messages})
    assert reply.status_code == 200, reply.text
    reference = reference_inputs(glm4v_checkpoint, as_template_messages(messages), images)
    assert reply.json()["tokens"] == reference["input_ids"][0].tolist()
    assert reply.json()["count"] == reference["input_ids"].shape[1]


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("/detokenize", {"tokens": [0, 1 << 30]}, 400, "tokens"),
        ("/detokenize", {"tokens": [-1]}, 400, "tokens"),
        ("/tokenize", {"prompt": TEXT, "add_special_tokens": True}, 400, "add_special_tokens"),
        ("/tokenize", {"prompt": ""}, 400, None),
        ("/tokenize", {"model": "gpt-4o", "prompt": TEXT}, 404, "model"),
        ("/tokenize", {"messages": [{"role": "user", "content": "hi"}], "chat_template": "x"}, 400,
         None),
    ],
)  # fmt: skip
def test_bad_bodies_are_openai_errors(
    app: TestClient, path: str, body: dict[str, Any], status: int, param: str | None
) -> None:
    reply = post(app, path, body)
    assert reply.status_code == status, reply.text
    if param:
        assert reply.json()["error"]["param"] == param


def test_the_api_key_guards_both_routes(app: TestClient) -> None:
    for path, body in (("/tokenize", {"prompt": TEXT}), ("/detokenize", {"tokens": [1]})):
        assert app.post(path, json=body).status_code == 401
