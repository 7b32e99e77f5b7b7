"""Grammars the server ships, as lark text for a ``Constraint(ConstraintKind.LARK, ...)``.

``phone_action_grammar``: one step of the AutoGLM phone agent, in the syntax Open-AutoGLM's
``phone_agent.actions.handler.parse_action`` reads: ``do(action="Tap", element=[x, y])``,
``finish(message="...")`` and the other actions its handler executes (its table of handlers,
one alternative each). Coordinates are the model's relative 0-999 grid, without leading zeros
(Python rejects ``002``); strings are Python literals without quotes, backslashes or line
breaks inside, which ``ast.literal_eval`` and the handler's slicing of ``Type`` and ``finish``
both read back unchanged.
"""

from __future__ import annotations

_PHONE_ACTION = r"""start: do | finish
finish: "finish(message=" TEXT ")"
do: "do(action=" action ")"
action: "\"Launch\", app=" TEXT
    | "\"Tap\", element=" point (", message=" TEXT)?
    | "\"Type\", text=" TEXT
    | "\"Type_Name\", text=" TEXT
    | "\"Swipe\", start=" point ", end=" point
    | "\"Back\""
    | "\"Home\""
    | "\"Double Tap\", element=" point
    | "\"Long Press\", element=" point
    | "\"Wait\", duration=\"" SECONDS " seconds\""
    | "\"Take_over\", message=" TEXT
    | "\"Note\", message=" TEXT
    | "\"Call_API\", instruction=" TEXT
    | "\"Interact\""
point: "[" COORD ", " COORD "]"
COORD: /0|[1-9][0-9]{0,2}/
SECONDS: /[1-9][0-9]?/
TEXT: /"[^"\\\n\r]{0,MAX_TEXT}"/
"""


def phone_action_grammar(max_text_chars: int = 500) -> str:
    """The lark grammar of one action; ``max_text_chars`` bounds each string argument."""
    return _PHONE_ACTION.replace("MAX_TEXT", str(max_text_chars))
