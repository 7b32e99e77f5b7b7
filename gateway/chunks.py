"""A streamed chat completion's token chunks as pre-encoded JSON.

Every streamed token costs one chunk, and on a 2-core host each cycle the gateway spends on it is
taken from the decoder's step. Building the chunk as pydantic models and dumping them cost ~40 us
a token; here the fields every chunk repeats are encoded once per stream, and a token's text and
bytes once per token id (``LogprobJson``), so a chunk is a few string joins. The JSON is what
``ChatCompletionChunk.model_dump_json(exclude_none=True)`` gives (gateway.responses): the same
keys in the same order, a non-finite logprob as null as pydantic writes it.
"""

from __future__ import annotations

import json
import math

from tokenizers import Tokenizer

from gateway.events import ChoiceEvent
from gateway.reasoning import token_bytes
from gateway.responses import CalledFunction, ToolCall, ToolCallDelta
from gateway.tools import ParsedCall
from services.decoder import types as decoder


def tool_call(call: ParsedCall) -> ToolCall:
    return ToolCall(id=call.id, function=CalledFunction(name=call.name, arguments=call.arguments))


def _string(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _number(value: float) -> str:
    return repr(value) if math.isfinite(value) else "null"


class LogprobJson:
    """Logprob entries (``{"token", "logprob", "bytes", "top_logprobs"}``) as JSON text; each
    token id's text and bytes are encoded once and kept (at most the vocabulary's size)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self._parts: dict[int, tuple[str, str]] = {}

    def _around(self, token_id: int) -> tuple[str, str]:
        """What comes before and after the logprob in this token's entry."""
        parts = self._parts.get(token_id)
        if parts is None:
            raw = token_bytes(self._tokenizer, token_id)
            text = raw.decode("utf-8", errors="replace")
            parts = f'{{"token":{_string(text)},"logprob":', f',"bytes":[{",".join(map(str, raw))}]'
            self._parts[token_id] = parts
        return parts

    def _open_entry(self, token_id: int, logprob: float) -> str:
        """``{"token", "logprob", "bytes"`` (the entry still open)."""
        before, after = self._around(token_id)
        return f"{before}{_number(logprob)}{after}"

    def entry(self, logprob: decoder.TokenLogprob) -> str:
        tops = ",".join(self._open_entry(t, p) + "}" for t, p in logprob.top_logprobs)
        return f'{self._open_entry(logprob.token_id, logprob.logprob)},"top_logprobs":[{tops}]}}'


class ChatChunks:
    """One stream's ``chat.completion.chunk`` events for its choices' deltas."""

    def __init__(
        self,
        job_id: str,
        created: int,
        model: str,
        system_fingerprint: str,
        logprobs: LogprobJson | None,
    ) -> None:
        fields = {
            "id": job_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": system_fingerprint,
        }
        head = json.dumps(fields, ensure_ascii=False, separators=(",", ":"))
        self._head = f'data: {head[:-1]},"choices":[{{"index":'
        self._logprobs = logprobs  # None: the request did not ask for them

    def event(self, event: ChoiceEvent) -> str:
        """The SSE event of one choice's delta: its text, reasoning, tool calls, logprobs and
        finish reason, each only when present."""
        delta = []
        if event.delta.content:
            delta.append(f'"content":{_string(event.delta.content)}')
        if event.tool_calls:
            calls = ",".join(
                ToolCallDelta(index=k, **tool_call(call).model_dump()).model_dump_json()
                for k, call in enumerate(event.tool_calls)
            )
            delta.append(f'"tool_calls":[{calls}]')
        if event.delta.reasoning:
            thought = _string(event.delta.reasoning)
            delta.append(f'"reasoning_content":{thought},"reasoning":{thought}')
        parts = [f'{self._head}{event.index},"delta":{{{",".join(delta)}}}']
        if self._logprobs is not None:
            entries = ",".join(self._logprobs.entry(lp) for lp in event.logprobs)
            parts.append(f'"logprobs":{{"content":[{entries}]}}')
        if event.finish_reason is not None:
            parts.append(f'"finish_reason":{_string(event.finish_reason)}')
        return ",".join(parts) + "}]}\n\n"
