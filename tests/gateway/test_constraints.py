"""A chat request's output constraint (issue 13, points 1 and 3): response_format and the
autoglm-phone action grammar become the decoder's Constraint, starting after </think> with
thinking on; the composed action grammar compiles against the shipped tokenizer and accepts
what Open-AutoGLM parses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import llguidance
import pytest
from tokenizers import Tokenizer

from gateway.constraints import ANSWER, autoglm_phone_grammar, output_constraint
from gateway.errors import ApiError
from gateway.protocol.chat_completions import ChatCompletionRequest
from services.decoder.constraint_spec import Constraint, ConstraintKind

END_THINK_ID = 14
SCHEMA = {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}


def chat(**fields: Any) -> ChatCompletionRequest:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    return ChatCompletionRequest.model_validate(body | fields)


def json_schema(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "s", "schema": schema, "strict": True}}


def test_free_requests_have_no_constraint() -> None:
    assert output_constraint(chat(), END_THINK_ID) is None
    assert output_constraint(chat(response_format={"type": "text"}), END_THINK_ID) is None


def test_response_formats_become_constraints() -> None:
    assert output_constraint(
        chat(response_format={"type": "json_object"}), END_THINK_ID
    ) == Constraint(ConstraintKind.JSON_OBJECT)
    constraint = output_constraint(chat(response_format=json_schema(SCHEMA)), END_THINK_ID)
    assert constraint is not None and constraint.kind is ConstraintKind.JSON_SCHEMA
    assert json.loads(constraint.spec) == SCHEMA and constraint.start_after_token_id is None


def test_with_thinking_the_constraint_starts_after_end_think() -> None:
    body = chat(response_format=json_schema(SCHEMA), enable_thinking=True)
    constraint = output_constraint(body, END_THINK_ID)
    assert constraint is not None and constraint.start_after_token_id == END_THINK_ID
    grammar = output_constraint(chat(action_grammar="autoglm-phone", enable_thinking=True), 14)
    assert grammar is not None and grammar.start_after_token_id == END_THINK_ID


def test_a_format_and_the_action_grammar_do_not_combine() -> None:
    body = chat(response_format={"type": "json_object"}, action_grammar="autoglm-phone")
    with pytest.raises(ApiError) as refused:
        output_constraint(body, END_THINK_ID)
    assert refused.value.param == "action_grammar"


def test_an_unknown_action_grammar_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="action_grammar"):
        chat(action_grammar="autoglm-car")


@pytest.fixture(scope="module")
def matcher_for(bundle_dir: Path) -> Any:
    path = bundle_dir / "decoder" / "tokenizer.json"
    tokenizer = Tokenizer.from_file(str(path))
    ll = llguidance.LLTokenizer(path.read_text(), n_vocab=tokenizer.get_vocab_size(), eos_token=0)

    def accepts(grammar: str, text: str) -> bool:
        matcher = llguidance.LLMatcher(ll, llguidance.LLMatcher.grammar_from_lark(grammar))
        assert not matcher.is_error(), matcher.get_error()
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        return matcher.consume_tokens(ids) and matcher.is_accepting()

    return accepts


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        (f'{ANSWER}do(action="Tap", element=[500, 120])', True),
        (f'{ANSWER}finish(message="done")', True),
        (f'{ANSWER}do(action="Launch", app="Maps")', True),
        ('do(action="Tap", element=[500, 120])', False),  # no <answer>
        (f'{ANSWER}do(action="Fly")', False),
        (f'{ANSWER}do(action="Tap", element=[5000, 1])', False),  # off the 0-999 grid
    ],
)
def test_the_action_grammar_is_answer_then_one_action(
    matcher_for: Any, text: str, ok: bool
) -> None:
    assert matcher_for(autoglm_phone_grammar(), text) is ok
