"""``/tokenize`` and ``/detokenize`` in vLLM's request and response shapes, so clients can
budget their context.

A chat body is rendered by the chat completions' own prompt building (``Pipeline.chat_prompt``),
so ``count`` is the ``prompt_tokens`` a chat request with these messages gets, image tokens
included; a prompt body is tokenized as ``/v1/completions`` tokenizes it.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field
from tokenizers import Tokenizer

from gateway.errors import ApiError
from gateway.pipeline import Pipeline
from gateway.protocol.chat_completions import ChatInput
from gateway.protocol.common import MAX_TEXT_CHARS, MAX_TOKENS, Request
from gateway.unhonoured import equals, refused


class TokenizeOptions(Request):
    model: str | None = None
    return_token_strs: bool = False
    # the server adds no special tokens to a prompt (the chat template writes its own)
    add_special_tokens: Annotated[Any, refused(equals(False), "add_special_tokens")] = None


class TokenizeChatRequest(ChatInput, TokenizeOptions):
    continue_final_message: Annotated[Any, refused(equals(False), "continue_final_message")] = None
    mm_processor_kwargs: Annotated[Any, refused(lambda v: not v, "mm_processor_kwargs")] = None


class TokenizePromptRequest(TokenizeOptions):
    prompt: str = Field(max_length=MAX_TEXT_CHARS)

    @property
    def prompt_text(self) -> str:
        return self.prompt


TokenizeRequest = TokenizeChatRequest | TokenizePromptRequest


def parse_tokenize_request(body: dict[str, Any]) -> TokenizeRequest:
    """A body with ``messages`` is a chat body, any other a prompt body (as vLLM tells them
    apart), so a refusal names the field of the kind that was sent."""
    if "messages" in body:
        return TokenizeChatRequest.model_validate(body)
    return TokenizePromptRequest.model_validate(body)


class TokenizeResponse(Request):
    count: int
    max_model_len: int | None = Field(description="null while the decoder does not answer")
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(Request):
    model: str | None = None
    tokens: Annotated[list[int], Field(max_length=MAX_TOKENS)]


class DetokenizeResponse(Request):
    prompt: str


async def tokenize(pipeline: Pipeline, body: TokenizeRequest, request_id: str) -> TokenizeResponse:
    if isinstance(body, TokenizeChatRequest):
        ids = (await pipeline.chat_prompt(body, request_id)).input_ids
    else:
        ids = pipeline.prompter.encode_prompt(body.prompt)
    strs = None
    if body.return_token_strs:
        strs = [pipeline.tokenizer.id_to_token(i) or "" for i in ids]
    return TokenizeResponse(
        count=len(ids),
        max_model_len=await pipeline.max_model_len(request_id),
        tokens=ids,
        token_strs=strs,
    )


def detokenize(tokenizer: Tokenizer, body: DetokenizeRequest) -> DetokenizeResponse:
    """Every id must be in the vocabulary; special tokens are kept, as vLLM keeps them."""
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    bad = [i for i in body.tokens if not 0 <= i < size]
    if bad:
        raise ApiError(f"token ids out of the vocabulary [0, {size}): {bad[:5]}", param="tokens")
    return DetokenizeResponse(prompt=tokenizer.decode(body.tokens, skip_special_tokens=False))
