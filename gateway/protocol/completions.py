"""The text completion request (``POST /v1/completions``, OpenAI's legacy endpoint): one prompt,
the shared parameters, logprobs as a count."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from gateway.protocol.common import MAX_TEXT_CHARS, MAX_TOKENS, GenerationParams
from gateway.unhonoured import CompletionUnhonoured

MAX_COMPLETION_LOGPROBS = 5


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
