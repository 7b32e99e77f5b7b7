"""What a chat request's output must follow, as the decoder's ``Constraint``.

``response_format`` ``json_object``/``json_schema``, a forced ``tool_choice`` (gateway.tools)
and the opt-in ``action_grammar`` become a grammar the decoder enforces token by token
(llguidance), so the answer parses even from random weights, unless ``max_tokens`` cuts it
(``finish_reason: length``). With thinking on, the output is free until the tokenizer's
``</think>``, as vLLM's reasoning-aware structured outputs are; the constraint applies to the
answer after it.

The ``autoglm-phone`` action grammar is one step of Open-AutoGLM's phone agent: ``<answer>`` and
one action (``do(action="Tap", element=[x, y])``, ``finish(message="...")``...), then the end of
the turn, as the real model stops at ``</answer>``: Open-AutoGLM's ``ModelClient`` splits the
content at ``do(action=``/``finish(message=`` and its ``parse_action`` reads the rest.
"""

from __future__ import annotations

import json

from gateway.errors import ApiError
from gateway.protocol.chat_completions import (
    ChatCompletionRequest,
    JsonObjectFormat,
    JsonSchemaFormat,
)
from gateway.tools import forced_call_grammar
from services.decoder.constraint_spec import Constraint, ConstraintKind
from services.decoder.grammars import phone_action_grammar

ANSWER = "<answer>"
ACTION_TEXT_CHARS = 500  # each string argument of an action (app names, typed text, messages)
_ACTION_START = "start: do | finish\n"


def autoglm_phone_grammar() -> str:
    """``<answer>`` then one action, composed around the decoder's action grammar."""
    action = phone_action_grammar(ACTION_TEXT_CHARS)
    if not action.startswith(_ACTION_START):
        raise RuntimeError("phone_action_grammar no longer starts with its start rule")
    step = action.removeprefix(_ACTION_START)
    return f'start: "{ANSWER}" step\nstep: do | finish\n{step}'


ACTION_GRAMMARS = {"autoglm-phone": autoglm_phone_grammar}


def output_constraint(body: ChatCompletionRequest, end_think_id: int | None) -> Constraint | None:
    """The request's constraint, or None when its output is free."""
    fmt = body.response_format
    asked = [
        name
        for name, given in (
            ("response_format", isinstance(fmt, JsonObjectFormat | JsonSchemaFormat)),
            ("action_grammar", body.action_grammar is not None),
            ("tool_choice", bool(body.forced_tools)),
        )
        if given
    ]
    if len(asked) > 1:
        raise ApiError(f"{' and '.join(asked)} cannot be combined", param=asked[-1])
    start = end_think_id if body.thinking else None
    if isinstance(fmt, JsonObjectFormat):
        return Constraint(ConstraintKind.JSON_OBJECT, start_after_token_id=start)
    if isinstance(fmt, JsonSchemaFormat):
        schema = json.dumps(fmt.json_schema.schema_)
        return Constraint(ConstraintKind.JSON_SCHEMA, schema, start_after_token_id=start)
    if body.forced_tools:
        parallel = body.parallel_tool_calls is not False and body.tool_choice == "required"
        grammar = forced_call_grammar(body.forced_tools, parallel)
        return Constraint(ConstraintKind.LARK, grammar, start_after_token_id=start)
    if body.action_grammar is not None:
        grammar = ACTION_GRAMMARS[body.action_grammar]()
        return Constraint(ConstraintKind.LARK, grammar, start_after_token_id=start)
    return None
