"""Tool calls in GLM-4's format: the tools a request offers, the grammar that forces a call, and
the parser that finds calls in the model's output.

GLM-4 writes a call as the function's name on its own line, then the arguments as one JSON
object (``get_weather\\n{"city": "Paris"}``); parallel calls follow one another. The chat
template renders offered tools and earlier calls the same way (bundle/chat_template.jinja).
``tool_choice`` ``required`` or a named function is enforced by a lark grammar whose arguments
are each function's JSON schema (llguidance's ``%json``), so a valid call comes back even from
random weights; ``auto`` leaves the output free and parses it.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

FUNCTION_NAME = r"^[A-Za-z0-9_-]{1,64}$"  # OpenAI's rule for function names


class FunctionDef(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["function"]
    function: FunctionDef


@dataclasses.dataclass(frozen=True)
class ParsedCall:
    name: str
    arguments: str  # JSON text, as OpenAI sends it
    id: str = dataclasses.field(default_factory=lambda: f"call_{secrets.token_hex(12)}")


def _schema(function: FunctionDef) -> dict[str, Any]:
    """The arguments' schema: a function without parameters takes none. Compact JSON (no
    free whitespace), so random weights cannot spend max_tokens on spaces."""
    schema = function.parameters or {
        "type": "object",
        "properties": {},
        "additionalProperties": False,
    }
    return schema | {"x-guidance": {"whitespace_flexible": False}}


def forced_call_grammar(tools: list[Tool], parallel: bool) -> str:
    """A lark grammar for one call (or, ``parallel``, one or more) of the given tools."""
    rules = [f"start: call{' (NL call)*' if parallel else ''}", r'NL: "\n"']
    rules.append("call: " + " | ".join(f"call_{i}" for i in range(len(tools))))
    for i, tool in enumerate(tools):
        name = json.dumps(tool.function.name + "\n")
        rules.append(f"call_{i}: {name} %json {json.dumps(_schema(tool.function))}")
    return "\n".join(rules) + "\n"


def parse_calls(text: str, names: set[str]) -> list[ParsedCall] | None:
    """The calls ``text`` consists of, or None when it is not (only) tool calls."""
    decoder = json.JSONDecoder()
    calls: list[ParsedCall] = []
    rest = text.strip()
    while rest:
        name, newline, after = rest.partition("\n")
        if not newline or name.strip() not in names:
            return None
        try:
            arguments, end = decoder.raw_decode(after.lstrip())
        except json.JSONDecodeError:
            return None
        if not isinstance(arguments, dict):
            return None
        calls.append(ParsedCall(name.strip(), json.dumps(arguments, ensure_ascii=False)))
        rest = after.lstrip()[end:].strip()
    return calls or None


class CallExtractor:
    """One choice's content, held back while it may still be tool calls.

    ``forced``: the whole output is calls (the grammar says so), nothing is streamed as content.
    Otherwise content is held only while it could still begin with ``name\\n`` for an offered
    name; once it cannot, what was held and everything after flows as content."""

    def __init__(self, names: set[str], forced: bool) -> None:
        self.names = names
        self.forced = forced
        self.held = ""
        self.passing = False

    def _may_be_call(self, text: str) -> bool:
        head = text.lstrip()
        if "\n" in head:
            return head.partition("\n")[0].strip() in self.names
        return any(f"{name}\n".startswith(head) for name in self.names)

    def feed(self, content: str) -> str:
        """The content to emit now."""
        if self.passing:
            return content
        self.held += content
        if self.forced or self._may_be_call(self.held):
            return ""
        self.passing = True
        held, self.held = self.held, ""
        return held

    def finish(self) -> tuple[str, list[ParsedCall]]:
        """At the end: the held content, or the calls it turned out to be."""
        calls = parse_calls(self.held, self.names) if not self.passing else None
        if calls:
            return "", calls
        held, self.held = self.held, ""
        return held, []
