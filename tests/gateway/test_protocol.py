"""The OpenAI request schema: what it accepts, what it caps, what it turns into."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from gateway.protocol.chat_completions import ChatCompletionRequest
from gateway.protocol.common import MAX_N, MAX_STOP
from gateway.protocol.completions import CompletionRequest
from gateway.protocol.messages import AssistantMessage, AudioURLPart, ImagePart, InputAudioPart
from services.decoder.params import SamplingParams, StoppingParams


def chat(**fields: Any) -> ChatCompletionRequest:
    body = {"model": "autoglm-phone-9b", "messages": [{"role": "user", "content": "hi"}]}
    return ChatCompletionRequest.model_validate(body | fields)


def test_every_role_and_content_part_the_spec_allows_is_accepted() -> None:
    request = chat(
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "developer", "content": [{"type": "text", "text": "really"}]},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}},
                    {"type": "input_audio", "input_audio": {"data": "AA==", "format": "mp3"}},
                    {"type": "audio_url", "audio_url": {"url": "data:audio/wav;base64,AA=="}},
                ],
            },
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "tap", "arguments": "{}"}}
            ]},
            {"role": "tool", "content": "done", "tool_call_id": "c1"},
        ]
    )  # fmt: skip
    assert isinstance(request.messages[3], AssistantMessage)
    assert request.messages[3].content is None
    kinds = [type(p) for p in request.media_parts()]
    assert kinds == [ImagePart, InputAudioPart, AudioURLPart]


def test_unknown_fields_are_accepted_and_ignored() -> None:
    request = chat(whatever=[1, 2], some_vendor_field={"x": 1})
    assert not hasattr(request, "whatever")


@pytest.mark.parametrize(
    "fields",
    [
        {"n": MAX_N + 1},
        {"n": 0},
        {"max_tokens": 0},
        {"temperature": 2.5},
        {"top_p": 0},
        {"top_logprobs": 21, "logprobs": True},
        {"top_logprobs": 2},  # without logprobs
        {"stop": ["x"] * (MAX_STOP + 1)},
        {"stop": "x" * 1000},
        {"presence_penalty": 3},
        {"messages": []},
        {"messages": [{"role": "wizard", "content": "hi"}]},
        {"messages": [{"role": "user", "content": [{"type": "video", "video": "x"}]}]},
        {"messages": [{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": "AA==", "format": "ogg"}}
        ]}]},
        {"messages": [{"role": "system", "content": [
            {"type": "image_url", "image_url": {"url": "data:x"}}
        ]}]},
    ],
)  # fmt: skip
def test_out_of_range_values_fail_validation(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        chat(**fields)


def test_sampling_and_stopping_params_come_from_the_request() -> None:
    request = chat(
        temperature=0.5, top_p=0.9, top_k=-1, seed=7, presence_penalty=0.5,
        frequency_penalty=-0.5, logprobs=True, top_logprobs=3, max_completion_tokens=12,
        max_tokens=99, stop_token_ids=[5], n=2,
    )  # fmt: skip
    assert request.to_sampling_params(1) == SamplingParams(
        temperature=0.5, top_p=0.9, top_k=0, seed=8, presence_penalty=0.5,
        frequency_penalty=-0.5, logprobs=True, top_logprobs=3,
    )  # fmt: skip
    # max_completion_tokens is the newer name and wins over max_tokens
    assert request.to_stopping_params(1024) == StoppingParams(max_tokens=12, stop_token_ids=(5,))


def test_defaults_follow_openai() -> None:
    request = chat()
    assert request.to_sampling_params().temperature == 1.0
    assert request.to_stopping_params(1024).max_tokens == 1024
    assert request.stop_strings == [] and not request.include_usage
    assert chat(stop="END").stop_strings == ["END"]
    assert chat(seed=-1).to_sampling_params().seed == 2**64 - 1  # any int64 is a seed


def test_enable_thinking_top_level_wins_over_template_kwargs() -> None:
    assert not chat().thinking
    assert chat(chat_template_kwargs={"enable_thinking": True}).thinking
    assert chat(enable_thinking=True).thinking
    assert not chat(enable_thinking=False, chat_template_kwargs={"enable_thinking": True}).thinking


def test_completion_request_takes_one_prompt() -> None:
    body = {"model": "m", "prompt": ["once upon"], "logprobs": 2}
    request = CompletionRequest.model_validate(body)
    assert request.prompt_text == "once upon"
    assert request.to_sampling_params().top_logprobs == 2
    assert request.to_stopping_params(1024).max_tokens == 16  # OpenAI's default for completions
    with pytest.raises(ValidationError):
        CompletionRequest.model_validate(body | {"prompt": ["a", "b"]})
    with pytest.raises(ValidationError):
        CompletionRequest.model_validate(body | {"logprobs": 6})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("best_of", 2),
        ("use_beam_search", True),
        ("audio", {"voice": "alloy", "format": "wav"}),
        ("modalities", ["text", "audio"]),
        ("prediction", {"type": "content", "content": "x"}),
        ("functions", [{"name": "f"}]),
        ("function_call", "auto"),
        ("reasoning_effort", "high"),
        ("store", True),
        ("service_tier", "flex"),
        ("guided_json", {"type": "object"}),
        ("response_format", {"type": "grammar", "grammar": "x"}),
    ],
)
def test_fields_the_server_does_not_honour_are_refused_by_name(field: str, value: Any) -> None:
    with pytest.raises(ValidationError) as refused:
        chat(**{field: value})
    assert refused.value.errors()[0]["loc"][0] == field


@pytest.mark.parametrize(
    ("field", "value"), [("suffix", "the end"), ("echo", True), ("best_of", 3)]
)
def test_completion_fields_the_server_does_not_honour_are_refused(field: str, value: Any) -> None:
    body = {"model": "m", "prompt": "once upon", field: value}
    with pytest.raises(ValidationError) as refused:
        CompletionRequest.model_validate(body)
    assert refused.value.errors()[0]["loc"][0] == field


def test_the_values_that_change_nothing_pass() -> None:
    """What the openai SDK, langchain-openai and Open-AutoGLM may send as defaults."""
    chat(best_of=1, store=False, modalities=["text"], service_tier="auto", user="u",
         metadata={"k": "v"}, response_format={"type": "text"}, tool_choice="none",
         parallel_tool_calls=True, echo=False, stream_options={"include_usage": True})  # fmt: skip
    CompletionRequest.model_validate({"model": "m", "prompt": "x", "suffix": "", "echo": False})


def test_logit_bias_min_p_and_repetition_penalty_reach_the_sampler() -> None:
    request = chat(logit_bias={"42": 100, "7": -100.0}, min_p=0.1, repetition_penalty=1.3)
    params = request.to_sampling_params()
    assert params.logit_bias == ((7, -100.0), (42, 100.0))  # sorted by id, as the decoder keeps it
    assert (params.min_p, params.repetition_penalty) == (0.1, 1.3)
    assert chat().to_sampling_params() == SamplingParams(temperature=1.0)


@pytest.mark.parametrize(
    "fields",
    [
        {"logit_bias": {"42": 101}},
        {"logit_bias": {"hello": 1}},
        {"logit_bias": {"-1": 1}},
        {"logit_bias": {"99999999999": 1}},
        {"logit_bias": {str(i): 1 for i in range(2000)}},
        {"min_p": 1.5},
        {"repetition_penalty": 0},
        {"repetition_penalty": 2.5},
    ],
)
def test_sampling_extensions_out_of_range_are_refused(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as refused:
        chat(**fields)
    assert refused.value.errors()[0]["loc"][0] == next(iter(fields))
