"""The request limits checked before any work: the body size, enforced while the body arrives
(not after it was buffered), compressed bodies refused, and the size of what a request asks the
chat template and the tokenizer to process (messages, text, tools)."""

from __future__ import annotations

import json
from typing import Protocol

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.config import GatewayConfig
from gateway.errors import ApiError, BodyTooLarge, UnsupportedEncoding, map_exception
from gateway.protocol.chat_completions import ChatInput
from gateway.protocol.messages import AssistantMessage, RefusalPart, TextPart

IDENTITY = (b"", b"identity")


class BodySizeLimit:
    """413 for a body over ``max_bytes``: at once from Content-Length when it is sent, else as
    soon as the chunks received pass the limit. A compressed body (Content-Encoding other than
    identity) is a 415: inflating it would not be bounded by the bytes received."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if headers.get(b"content-encoding", b"").strip().lower() not in IDENTITY:
            refused = UnsupportedEncoding("compressed request bodies are not accepted")
            await map_exception(refused).response()(scope, receive, send)
            return
        message = f"request body larger than {self.max_bytes} bytes"
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            await map_exception(BodyTooLarge(message)).response()(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            incoming = await receive()
            if incoming["type"] == "http.request":
                received += len(incoming.get("body", b""))
                if received > self.max_bytes:
                    # FastAPI turns other errors raised while reading a body into a 400.
                    raise HTTPException(413, message)
            return incoming

        await self.app(scope, limited, send)


class PromptInput(Protocol):
    @property
    def prompt_text(self) -> str: ...


def _too_large(what: str, size: int, limit: int, param: str) -> ApiError:
    return ApiError(f"{size} {what} exceed the limit of {limit}", param=param)


def _text_chars(content: object) -> int:
    if isinstance(content, str):
        return len(content)
    parts = content if isinstance(content, list) else []
    return sum(
        len(p.text) if isinstance(p, TextPart) else len(p.refusal)
        for p in parts
        if isinstance(p, TextPart | RefusalPart)
    )


def check_input_size(body: ChatInput | PromptInput, config: GatewayConfig) -> None:
    """A 400 naming the limit when the request's text, messages or tools are over the
    configured bounds, so rendering and tokenizing (off the event loop) stay bounded too."""
    if not isinstance(body, ChatInput):
        chars = len(body.prompt_text)
        if chars > config.max_text_chars:
            raise _too_large("prompt characters", chars, config.max_text_chars, "prompt")
        return
    if len(body.messages) > config.max_messages:
        raise _too_large("messages", len(body.messages), config.max_messages, "messages")
    chars = sum(_text_chars(message.content) for message in body.messages)
    if chars > config.max_text_chars:
        raise _too_large("text characters", chars, config.max_text_chars, "messages")
    calls = [
        call
        for message in body.messages
        if isinstance(message, AssistantMessage)
        for call in message.tool_calls or ()
    ]
    tools = [tool.model_dump(exclude_none=True) for tool in body.tools or ()]
    tool_bytes = len(json.dumps(tools)) if tools else 0
    tool_bytes += sum(len(c.function.arguments) + len(c.function.name) for c in calls)
    if tool_bytes > config.max_tool_bytes:
        raise _too_large(
            "bytes of tools and tool arguments", tool_bytes, config.max_tool_bytes, "tools"
        )
