"""The OpenAI API types, as pydantic models, in the order OpenAI's reference lists them: the
requests (messages, content parts, parameters), then the responses, streamed chunks, usage,
models and errors.

Requests accept and ignore fields they do not know (clients written for OpenAI or vLLM send
many), and cap every list, string and number in the schema to what the decoder's protobuf
fields and the model hold, so oversized requests fail validation (400, the field named) before
any work. Fields that would choose server code paths are refused, not ignored: ``chat_template``
and any ``chat_template_kwargs`` key but the documented ones (``TEMPLATE_KWARGS``).
``to_sampling_params``/``to_stopping_params`` produce the decoder's types.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.tools import Tool
from gateway.unhonoured import ChatUnhonoured, CompletionUnhonoured
from services.decoder.params import MAX_LOGIT_BIAS, MAX_TOP_LOGPROBS, SamplingParams, StoppingParams

MAX_MESSAGES = 512
MAX_PARTS = 256
MAX_TEXT_CHARS = 1_000_000
MAX_STOP = 16
MAX_STOP_CHARS = 256
MAX_TOKENS = 1 << 20
MAX_N = 8
MAX_LOGIT_BIAS_TOKENS = 1024
MAX_COMPLETION_LOGPROBS = 5
MAX_NAME_CHARS = 256
INT32_MAX = (1 << 31) - 1  # top_k and token ids travel as protobuf int32
# chat_template_kwargs a request may set, with their types; every other key is a 400
TEMPLATE_KWARGS: dict[str, type] = {"enable_thinking": bool}


class Request(BaseModel):
    """Unknown fields are accepted and ignored, as OpenAI and vLLM do; known fields the server
    does not honour are refused by name (``gateway.unhonoured``)."""

    model_config = ConfigDict(extra="ignore")


# --- content parts ---------------------------------------------------------------------------

Text = Annotated[str, Field(max_length=MAX_TEXT_CHARS)]
Name = Annotated[str, Field(max_length=MAX_NAME_CHARS)]
TokenId = Annotated[int, Field(ge=0, le=INT32_MAX)]


class TextPart(Request):
    type: Literal["text"]
    text: Text


class ImageURL(Request):
    url: str = Field(
        description="a data: URL (PNG, JPEG, WebP, GIF), or http(s) from the allowlist"
    )
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(Request):
    type: Literal["image_url"]
    image_url: ImageURL


class InputAudio(Request):
    data: str = Field(description="base64-encoded audio file")
    format: Literal["wav", "mp3", "flac"]


class InputAudioPart(Request):
    type: Literal["input_audio"]
    input_audio: InputAudio


class AudioURL(Request):
    url: str = Field(description="a data: URL of a WAV, MP3 or FLAC file")


class AudioURLPart(Request):
    type: Literal["audio_url"]
    audio_url: AudioURL


class RefusalPart(Request):
    type: Literal["refusal"]
    refusal: Text


ContentPart = Annotated[
    TextPart | ImagePart | InputAudioPart | AudioURLPart, Field(discriminator="type")
]
MediaPart = ImagePart | InputAudioPart | AudioURLPart
TextParts = Annotated[list[TextPart], Field(max_length=MAX_PARTS)]

# --- messages --------------------------------------------------------------------------------


class SystemMessage(Request):
    role: Literal["system", "developer"]
    content: Text | TextParts
    name: Name | None = None


class UserMessage(Request):
    role: Literal["user"]
    content: Text | Annotated[list[ContentPart], Field(max_length=MAX_PARTS)]
    name: Name | None = None


class FunctionCall(Request):
    name: Name
    arguments: Text


class ToolCall(Request):
    id: Name
    type: Literal["function"] = "function"
    function: FunctionCall


class AssistantMessage(Request):
    role: Literal["assistant"]
    content: Text | Annotated[list[TextPart | RefusalPart], Field(max_length=MAX_PARTS)] | None = (
        None
    )
    name: Name | None = None
    tool_calls: Annotated[list[ToolCall], Field(max_length=MAX_PARTS)] | None = None


class ToolMessage(Request):
    role: Literal["tool"]
    content: Text | TextParts
    tool_call_id: Name


Message = Annotated[
    SystemMessage | UserMessage | AssistantMessage | ToolMessage, Field(discriminator="role")
]

# --- parameters ------------------------------------------------------------------------------


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


class StreamOptions(Request):
    include_usage: bool = False


class GenerationParams(Request):
    """What chat and text completions share: model, sampling, stopping, streaming."""

    model: Name
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(
        None, ge=-1, le=INT32_MAX, description="vLLM extension; 0 or -1 disables it"
    )
    seed: int | None = Field(None, ge=-(1 << 63), lt=1 << 64)
    stop: (
        Annotated[str, Field(max_length=MAX_STOP_CHARS)]
        | Annotated[
            list[Annotated[str, Field(max_length=MAX_STOP_CHARS)]], Field(max_length=MAX_STOP)
        ]
        | None
    ) = None
    stop_token_ids: Annotated[list[TokenId], Field(max_length=MAX_STOP)] | None = None
    ignore_eos: bool = False
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    logit_bias: (
        Annotated[
            dict[str, Annotated[float, Field(ge=-MAX_LOGIT_BIAS, le=MAX_LOGIT_BIAS)]],
            Field(max_length=MAX_LOGIT_BIAS_TOKENS),
        ]
        | None
    ) = Field(None, description="token id (as a string) -> bias added to its logit")
    min_p: float = Field(0.0, ge=0, le=1, description="vLLM extension; 0 disables it")
    repetition_penalty: float = Field(
        1.0, gt=0, le=2, description="vLLM extension (its semantics); 1 disables it"
    )
    n: int = Field(1, ge=1, le=MAX_N)
    user: Name | None = None

    @field_validator("logit_bias")
    @classmethod
    def _token_id_keys(cls, bias: dict[str, float] | None) -> dict[str, float] | None:
        for key in bias or {}:
            if not key.isdigit() or int(key) > INT32_MAX:
                raise ValueError(f"keys must be token ids, got {key[:20]!r}")
        return bias

    @property
    def stop_strings(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [s for s in stops if s]

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    def wants_logprobs(self) -> tuple[bool, int]:
        return False, 0

    def to_sampling_params(self, choice: int = 0) -> SamplingParams:
        """Choice i of n gets seed + i, so the n choices differ yet stay reproducible."""
        logprobs, top = self.wants_logprobs()
        return SamplingParams(
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=max(self.top_k or 0, 0),
            seed=None if self.seed is None else (self.seed + choice) % (1 << 64),
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            logprobs=logprobs,
            top_logprobs=top,
            min_p=self.min_p,
            repetition_penalty=self.repetition_penalty,
            logit_bias=tuple((int(t), b) for t, b in (self.logit_bias or {}).items()),
        )

    def to_stopping_params(self, default_max_tokens: int) -> StoppingParams:
        return StoppingParams(
            max_tokens=self.requested_max_tokens() or default_max_tokens,
            stop_token_ids=tuple(self.stop_token_ids or ()),
            ignore_eos=self.ignore_eos,
        )


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


class CompletionRequest(GenerationParams, CompletionUnhonoured):
    prompt: (
        Annotated[str, Field(max_length=MAX_TEXT_CHARS)]
        | Annotated[
            list[Annotated[str, Field(max_length=MAX_TEXT_CHARS)]],
            Field(min_length=1, max_length=1),
        ]
    ) = Field(description="one prompt (a string or a list holding one string)")
    max_tokens: int | None = Field(16, ge=1, le=MAX_TOKENS)
    logprobs: int | None = Field(None, ge=0, le=MAX_COMPLETION_LOGPROBS)

    @property
    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def wants_logprobs(self) -> tuple[bool, int]:
        return self.logprobs is not None, self.logprobs or 0
