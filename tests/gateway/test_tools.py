"""GLM-4 tool calls (issue 13, point 2) without processes: the parser on crafted outputs (random
weights never write a call), the held-back streaming of what may still be a call, the grammar
a forced tool_choice compiles to, tool_choice checks, and the template's GLM-4 rendering."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import llguidance
import pytest
from pydantic import ValidationError
from tokenizers import Tokenizer

from gateway.chat import ChatPrompter
from gateway.protocol.chat_completions import ChatCompletionRequest
from gateway.tools import CallExtractor, Tool, forced_call_grammar, parse_calls
from services.common.errors import InvalidInput

NAMES = {"get_weather", "tap"}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 20}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
TAP = {"type": "function", "function": {"name": "tap", "description": "tap the screen"}}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('get_weather\n{"city": "Paris"}', [("get_weather", {"city": "Paris"})]),
        ('\n get_weather\n {"city":"Oslo"} \n', [("get_weather", {"city": "Oslo"})]),
        (
            'get_weather\n{"city": "Paris"}\ntap\n{}',
            [("get_weather", {"city": "Paris"}), ("tap", {})],
        ),
        (
            'get_weather\n{"city": "Paris"}tap\n{}',
            [("get_weather", {"city": "Paris"}), ("tap", {})],
        ),
        ("The weather is fine.", None),
        ('get_weather\n{"city": "Par', None),  # cut short
        ('get_weather\n{"city": "Paris"} and more text', None),
        ('send_mail\n{"to": "x"}', None),  # not an offered tool
        ("get_weather\n[1, 2]", None),  # arguments are an object
        ("", None),
    ],
)
def test_the_parser_reads_glm4_calls_and_nothing_else(
    text: str, expected: list[tuple[str, dict[str, Any]]] | None
) -> None:
    calls = parse_calls(text, NAMES)
    if expected is None:
        assert calls is None
    else:
        assert calls is not None
        assert [(c.name, json.loads(c.arguments)) for c in calls] == expected
        assert len({c.id for c in calls}) == len(calls)


def feed(extractor: CallExtractor, pieces: list[str]) -> tuple[str, list[str]]:
    shown = "".join(extractor.feed(p) for p in pieces)
    held, calls = extractor.finish()
    return shown + held, [c.name for c in calls]


def test_auto_streams_text_once_it_cannot_be_a_call() -> None:
    extractor = CallExtractor(NAMES, forced=False)
    assert extractor.feed("ge") == ""  # may still become get_weather
    assert extractor.feed("nerally fine") == "generally fine"
    assert extractor.feed(" today") == " today"
    assert extractor.finish() == ("", [])


def test_auto_holds_a_call_and_returns_it_at_the_end() -> None:
    content, calls = feed(
        CallExtractor(NAMES, forced=False), ["get_", 'weather\n{"ci', 'ty": "X"}']
    )
    assert (content, calls) == ("", ["get_weather"])


def test_a_held_text_that_was_no_call_comes_back_as_content() -> None:
    assert feed(CallExtractor(NAMES, forced=False), ["tap\n", "not json"]) == ("tap\nnot json", [])
    assert feed(CallExtractor(NAMES, forced=True), ["tap\n{"]) == ("tap\n{", [])  # cut short


def matcher(bundle_dir: Path, grammar: str) -> tuple[Any, Tokenizer]:
    path = bundle_dir / "decoder" / "tokenizer.json"
    tokenizer = Tokenizer.from_file(str(path))
    ll = llguidance.LLTokenizer(path.read_text(), n_vocab=tokenizer.get_vocab_size(), eos_token=0)
    compiled = llguidance.LLMatcher(ll, llguidance.LLMatcher.grammar_from_lark(grammar))
    assert not compiled.is_error(), compiled.get_error()
    return compiled, tokenizer


@pytest.mark.parametrize(
    ("parallel", "text", "ok"),
    [
        (False, 'get_weather\n{"city":"Paris"}', True),
        (False, "tap\n{}", True),
        (False, 'get_weather\n{"town":"Paris"}', False),  # not the schema
        (False, 'get_weather\n{"city":"Paris"}\ntap\n{}', False),
        (True, 'get_weather\n{"city":"Paris"}\ntap\n{}', True),
        (True, "hello", False),
        (False, 'tap\n{"x":1}', False),  # a function without parameters takes none
    ],
)
def test_the_forced_grammar_takes_calls_that_match_the_schemas(
    bundle_dir: Path, parallel: bool, text: str, ok: bool
) -> None:
    tools = [Tool.model_validate(WEATHER), Tool.model_validate(TAP)]
    compiled, tokenizer = matcher(bundle_dir, forced_call_grammar(tools, parallel))
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    assert (compiled.consume_tokens(ids) and compiled.is_accepting()) is ok


def chat(**fields: Any) -> ChatCompletionRequest:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": [WEATHER, TAP]}
    return ChatCompletionRequest.model_validate(body | fields)


def test_tool_choice_selects_the_forced_tools() -> None:
    assert chat().forced_tools == [] and chat().parses_tool_calls
    assert not chat(tool_choice="none").parses_tool_calls
    assert len(chat(tool_choice="required").forced_tools) == 2
    named = chat(tool_choice={"type": "function", "function": {"name": "tap"}})
    assert [t.function.name for t in named.forced_tools] == ["tap"]


@pytest.mark.parametrize(
    "fields",
    [
        {"tool_choice": {"type": "function", "function": {"name": "fly"}}},
        {"tool_choice": "required", "tools": None},
        {"tools": [{"type": "function", "function": {"name": "has space"}}]},
        {"tools": [{"type": "retrieval"}]},
    ],
)
def test_bad_tool_choices_are_refused(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        chat(**fields)


def test_the_template_renders_tools_calls_and_results_as_glm4(bundle_dir: Path) -> None:
    body = chat(
        messages=[
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "<|user|>"}'}}]},
            {"role": "tool", "content": "sunny", "tool_call_id": "c1"},
        ]
    )  # fmt: skip
    prompter = ChatPrompter.from_pretrained(bundle_dir / "decoder")
    tools = [t.model_dump(exclude_none=True) for t in body.tools or ()]
    prompt = prompter.render(body.messages, [], enable_thinking=False, tools=tools)
    text = prompter.tokenizer.decode(prompt.input_ids)
    assert "## get_weather" in text and '"maxLength": 20' in text
    assert '<|assistant|>get_weather\n{"city": "<|user|>"}<|observation|>\nsunny' in text
    user_id = prompter.tokenizer.convert_tokens_to_ids("<|user|>")
    assert prompt.input_ids.count(user_id) == 1  # the argument's <|user|> stayed text


def test_a_template_without_tool_support_refuses_tools(glm4v_checkpoint: Path) -> None:
    """GLM-4.1V's own template has no tools: they would be dropped silently, so they are a 400."""
    prompter = ChatPrompter.from_pretrained(glm4v_checkpoint)
    assert not prompter.renders_tools
    with pytest.raises(InvalidInput, match="does not render tools"):
        prompter.render(chat().messages, [], enable_thinking=False, tools=[WEATHER])
