"""OpenAI (and vLLM) request fields the server does not honour, refused by name.

Unknown fields are still ignored (clients send many), but a field this server knows and cannot
act on is a 400 naming it, unless it carries the value that changes nothing (``best_of: 1``,
``store: false``, ``modalities: ["text"]``...): a client that asks for two samples, audio output
or a suffix must not silently get something else. Each field is declared on the request models
through the mixins below, so a refusal's ``loc`` (and the error's ``param``) is the field.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel


def _refused(harmless: Callable[[Any], bool], why: str) -> Any:
    """A field accepted only with a value that changes nothing (``None`` always passes)."""

    def check(value: Any) -> Any:
        if value is not None and not harmless(value):
            raise ValueError(f"not supported by this server: {why}")
        return value

    return AfterValidator(check)


def _never(value: Any) -> bool:
    return False


def _is(*values: Any) -> Callable[[Any], bool]:
    return lambda value: any(value == v and type(value) is type(v) for v in values)


class GenerationUnhonoured(BaseModel):
    """Refused on both /v1/chat/completions and /v1/completions."""

    best_of: Annotated[Any, _refused(_is(1), "best_of other than 1 (use n)")] = None
    use_beam_search: Annotated[Any, _refused(_is(False), "beam search")] = None
    min_tokens: Annotated[Any, _refused(_is(0), "min_tokens")] = None
    prompt_logprobs: Annotated[Any, _refused(_never, "prompt_logprobs")] = None
    length_penalty: Annotated[Any, _refused(_is(1, 1.0), "length_penalty")] = None
    truncate_prompt_tokens: Annotated[Any, _refused(_never, "truncating the prompt")] = None
    guided_json: Annotated[Any, _refused(_never, "use response_format")] = None
    guided_regex: Annotated[Any, _refused(_never, "use response_format")] = None
    guided_choice: Annotated[Any, _refused(_never, "use response_format")] = None
    guided_grammar: Annotated[Any, _refused(_never, "use response_format")] = None
    structured_outputs: Annotated[Any, _refused(_never, "use response_format")] = None
    store: Annotated[Any, _refused(_is(False), "stored completions")] = None
    logit_bias: Annotated[Any, _refused(_is({}), "logit_bias")] = None
    min_p: Annotated[Any, _refused(_is(0, 0.0), "min_p")] = None
    repetition_penalty: Annotated[Any, _refused(_is(1, 1.0), "repetition_penalty")] = None
    service_tier: Annotated[Any, _refused(_is("auto", "default"), "service tiers")] = None


class ChatUnhonoured(GenerationUnhonoured):
    audio: Annotated[Any, _refused(_never, "audio output")] = None
    modalities: Annotated[Any, _refused(_is(["text"]), 'output modalities other than ["text"]')] = (
        None
    )
    prediction: Annotated[Any, _refused(_never, "predicted outputs")] = None
    functions: Annotated[Any, _refused(_never, "functions (use tools)")] = None
    function_call: Annotated[Any, _refused(_never, "function_call (use tool_choice)")] = None
    web_search_options: Annotated[Any, _refused(_never, "web search")] = None
    reasoning_effort: Annotated[Any, _refused(_never, "reasoning_effort (use enable_thinking)")] = (
        None
    )
    verbosity: Annotated[Any, _refused(_never, "verbosity")] = None
    continue_final_message: Annotated[Any, _refused(_is(False), "continue_final_message")] = None
    echo: Annotated[Any, _refused(_is(False), "echo")] = None


class CompletionUnhonoured(GenerationUnhonoured):
    suffix: Annotated[Any, _refused(_is(""), "suffix (no fill-in-the-middle)")] = None
    echo: Annotated[Any, _refused(_is(False), "echo")] = None
