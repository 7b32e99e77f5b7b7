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


def refused(harmless: Callable[[Any], bool], why: str) -> Any:
    """A field accepted only with a value that changes nothing (``None`` always passes)."""

    def check(value: Any) -> Any:
        if value is not None and not harmless(value):
            raise ValueError(f"not supported by this server: {why}")
        return value

    return AfterValidator(check)


def never(value: Any) -> bool:
    return False


def equals(*values: Any) -> Callable[[Any], bool]:
    return lambda value: any(value == v and type(value) is type(v) for v in values)


class GenerationUnhonoured(BaseModel):
    """Refused on both /v1/chat/completions and /v1/completions."""

    best_of: Annotated[Any, refused(equals(1), "best_of other than 1 (use n)")] = None
    use_beam_search: Annotated[Any, refused(equals(False), "beam search")] = None
    min_tokens: Annotated[Any, refused(equals(0), "min_tokens")] = None
    prompt_logprobs: Annotated[Any, refused(never, "prompt_logprobs")] = None
    length_penalty: Annotated[Any, refused(equals(1, 1.0), "length_penalty")] = None
    truncate_prompt_tokens: Annotated[Any, refused(never, "truncating the prompt")] = None
    guided_json: Annotated[Any, refused(never, "use response_format")] = None
    guided_regex: Annotated[Any, refused(never, "use response_format")] = None
    guided_choice: Annotated[Any, refused(never, "use response_format")] = None
    guided_grammar: Annotated[Any, refused(never, "use response_format")] = None
    structured_outputs: Annotated[Any, refused(never, "use response_format")] = None
    store: Annotated[Any, refused(equals(False), "stored completions")] = None
    service_tier: Annotated[Any, refused(equals("auto", "default"), "service tiers")] = None


class ChatUnhonoured(GenerationUnhonoured):
    audio: Annotated[Any, refused(never, "audio output")] = None
    modalities: Annotated[Any, refused(equals(["text"]), "output other than text")] = None
    prediction: Annotated[Any, refused(never, "predicted outputs")] = None
    functions: Annotated[Any, refused(never, "functions (use tools)")] = None
    function_call: Annotated[Any, refused(never, "function_call (use tool_choice)")] = None
    web_search_options: Annotated[Any, refused(never, "web search")] = None
    reasoning_effort: Annotated[Any, refused(never, "reasoning_effort (use enable_thinking)")] = (
        None
    )
    verbosity: Annotated[Any, refused(never, "verbosity")] = None
    continue_final_message: Annotated[Any, refused(equals(False), "continue_final_message")] = None
    echo: Annotated[Any, refused(equals(False), "echo")] = None


class CompletionUnhonoured(GenerationUnhonoured):
    suffix: Annotated[Any, refused(equals(""), "suffix (no fill-in-the-middle)")] = None
    echo: Annotated[Any, refused(equals(False), "echo")] = None
