"""The messages of a chat completion request and their content parts, as OpenAI's reference
lists them: system (or developer), user (text, image, audio parts), assistant (with tool calls)
and tool messages."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from gateway.protocol.common import MAX_PARTS, Name, Request, Text


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
