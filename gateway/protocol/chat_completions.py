"""The chat completion request (``POST /v1/chat/completions``): its parameters beyond the shared
ones (response format, tool choice, logprobs, reasoning) and ``ChatInput``, what renders the
prompt (shared with ``/tokenize``). A chat template, or any ``chat_template_kwargs`` key but the
documented ones (``TEMPLATE_KWARGS``), is refused: it would choose a server code path."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from gateway.protocol.common import MAX_PARTS, MAX_TOKENS, GenerationParams, Request
from gateway.protocol.messages import MediaPart, Message, TextPart, UserMessage
from gateway.tools import Tool
from gateway.unhonoured import ChatUnhonoured
from services.decoder.params import MAX_TOP_LOGPROBS

MAX_MESSAGES = 512
# chat_template_kwargs a request may set, with their types; every other key is a 400
TEMPLATE_KWARGS: dict[str, type] = {"enable_thinking": bool}


class TextFormat(Request):
    type: Literal["text"]


class JsonObjectFormat(Request):
    type: Literal["json_object"]


class JsonSchemaSpec(Request):
    name: str = Field(max_length=64)
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class JsonSchemaFormat(Request):
    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


ResponseFormat = Annotated[
    TextFormat | JsonObjectFormat | JsonSchemaFormat, Field(discriminator="type")
]


class NamedFunction(Request):
    name: str


class NamedToolChoice(Request):
    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class ChatInput(Request):
    """What makes a chat prompt: the messages, tools and template switches (shared by chat
    completions and /tokenize, so both render the same prompt)."""

    messages: Annotated[list[Message], Field(min_length=1, max_length=MAX_MESSAGES)]
    tools: Annotated[list[Tool], Field(max_length=MAX_PARTS)] | None = None
    chat_template_kwargs: dict[str, Any] | None = Field(
        None, description=f"only {', '.join(TEMPLATE_KWARGS)}; any other key is refused"
    )
    chat_template: str | None = Field(
        None, description="refused: the server renders with the model's own template"
    )
    add_generation_prompt: bool = True
    enable_thinking: bool | None = Field(
        None, description="thinking mode of the chat template (also chat_template_kwargs)"
    )

    @field_validator("chat_template_kwargs")
    @classmethod
    def _documented_template_kwargs(cls, kwargs: dict[str, Any] | None) -> dict[str, Any] | None:
        for key, value in (kwargs or {}).items():
            kind = TEMPLATE_KWARGS.get(key)
            if kind is None:
                supported = ", ".join(TEMPLATE_KWARGS)
                raise ValueError(f"unsupported key {key!r}; supported: {supported}")
            if not isinstance(value, kind):
                raise ValueError(f"{key} must be a {kind.__name__}")
        return kwargs

    @field_validator("chat_template")
    @classmethod
    def _no_request_template(cls, template: str | None) -> None:
        if template is not None:
            raise ValueError("a request may not set the chat template; the model's own is used")

    @property
    def thinking(self) -> bool:
        """Top-level enable_thinking wins over chat_template_kwargs; off unless asked."""
        if self.enable_thinking is not None:
            return self.enable_thinking
        return bool((self.chat_template_kwargs or {}).get("enable_thinking", False))

    def media_parts(self) -> list[MediaPart]:
        """Every image and audio part, in prompt order (the order the template renders them)."""
        return [
            part
            for message in self.messages
            if isinstance(message, UserMessage) and isinstance(message.content, list)
            for part in message.content
            if not isinstance(part, TextPart)
        ]


class ChatCompletionRequest(GenerationParams, ChatInput, ChatUnhonoured):
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    metadata: dict[str, str] | None = Field(None, description="accepted, not stored")
    action_grammar: Literal["autoglm-phone"] | None = Field(
        None, description="constrain the answer to one phone-agent action (Open-AutoGLM syntax)"
    )
    return_reasoning: bool = Field(
        False, description="send the <think> text as reasoning_content and reasoning"
    )
    keep_reasoning_inline: bool | None = Field(
        None, description="keep <think>...</think> inline in content (server default if unset)"
    )

    @model_validator(mode="after")
    def _top_logprobs_need_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs to be true")
        return self

    @model_validator(mode="after")
    def _tool_choice_names_an_offered_tool(self) -> ChatCompletionRequest:
        names = {tool.function.name for tool in self.tools or ()}
        choice = self.tool_choice
        if choice == "required" and not names:
            raise ValueError("tool_choice required needs tools")
        if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
            raise ValueError(f"tool_choice names {choice.function.name!r}, which is not in tools")
        return self

    @property
    def forced_tools(self) -> list[Tool]:
        """The tools one of which the output must call (tool_choice required or named)."""
        if self.tool_choice == "required":
            return list(self.tools or ())
        if isinstance(self.tool_choice, NamedToolChoice):
            name = self.tool_choice.function.name
            return [tool for tool in self.tools or () if tool.function.name == name]
        return []

    @property
    def parses_tool_calls(self) -> bool:
        return bool(self.tools) and self.tool_choice != "none"

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def wants_logprobs(self) -> tuple[bool, int]:
        return self.logprobs, self.top_logprobs or 0
