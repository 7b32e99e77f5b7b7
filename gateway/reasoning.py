"""Generated token ids -> the text deltas a client sees.

Three things happen per token, in this order:
1. ``<think>``/``</think>`` ids switch between the reasoning and the content channel (the
   thinking template ends the prompt with ``<think>``, so generation starts in reasoning);
2. the other ids are detokenized incrementally at O(1) per token (``Detokenizer``, which holds
   back a partial UTF-8 character until its last byte arrives, and flushes what it still holds
   at a channel switch and at the end); special tokens are skipped;
3. the text passes a ``StopMatcher``: stop strings match across token boundaries, text that
   might begin a stop string is held back until it is known not to, and a matched stop string
   is never shown.

Reasoning text is sent separately (``reasoning_content``), kept inline in the content between
literal ``<think>`` and ``</think>`` (for clients that drop unknown fields, e.g. langchain), or
left out; it is counted in ``reasoning_tokens`` either way.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
from collections.abc import Iterable, Sequence

from tokenizers import Tokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from gateway.detokenizer import Detokenizer

THINK, END_THINK = "<think>", "</think>"


class ReasoningOutput(enum.Enum):
    SEPARATE = "separate"  # reasoning_content / reasoning fields
    INLINE = "inline"  # <think>...</think> kept in content
    DROP = "drop"  # left out of the response


class StopMatcher:
    """Finds the first stop string in a stream of text pieces."""

    def __init__(self, stops: Iterable[str]) -> None:
        self.stops = [s for s in stops if s]
        self.pending = ""

    def push(self, text: str) -> tuple[str, bool]:
        """(text safe to show now, whether a stop string matched). After a match, the text up
        to the stop string is returned and the rest is dropped."""
        buffer = self.pending + text
        hits = [i for i in (buffer.find(stop) for stop in self.stops) if i >= 0]
        if hits:
            self.pending = ""
            return buffer[: min(hits)], True
        hold = self._partial_stop_suffix(buffer)
        self.pending = buffer[len(buffer) - hold :]
        return buffer[: len(buffer) - hold], False

    def flush(self) -> str:
        pending, self.pending = self.pending, ""
        return pending

    def _partial_stop_suffix(self, buffer: str) -> int:
        """Length of the longest end of ``buffer`` that begins some stop string."""
        longest = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(buffer)), longest, -1):
                if stop.startswith(buffer[-size:]):
                    longest = size
                    break
        return longest


@dataclasses.dataclass
class Delta:
    content: str = ""
    reasoning: str = ""
    tokens: int = 0  # how many of the fed ids it covers (fewer than fed once a stop matched)


class OutputParser:
    """Per choice: feed it each response's token ids, then ``finish()``."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        stop: Sequence[str] = (),
        thinking: bool = False,
        reasoning: ReasoningOutput = ReasoningOutput.DROP,
        split_reasoning: bool = True,
    ) -> None:
        self.reasoning_output = reasoning
        self.think_id = tokenizer.token_to_id(THINK) if split_reasoning else None
        self.end_think_id = tokenizer.token_to_id(END_THINK) if split_reasoning else None
        self.in_reasoning = thinking and self.end_think_id is not None
        self.matcher = StopMatcher(stop)
        self.detokenizer = Detokenizer(tokenizer)
        self.stopped = False  # a stop string matched: generation should end
        self.reasoning_tokens = 0
        self._opening = self.in_reasoning and reasoning is ReasoningOutput.INLINE

    def feed(self, token_ids: Sequence[int]) -> Delta:
        delta = Delta()
        if self._opening:
            delta.content += THINK
            self._opening = False
        for token in token_ids:
            if self.stopped:
                break
            delta.tokens += 1
            if token in (self.think_id, self.end_think_id):
                self.reasoning_tokens += 1
                self._end_channel(delta)
                self.in_reasoning = token == self.think_id
                if self.reasoning_output is ReasoningOutput.INLINE and not self.stopped:
                    delta.content += THINK if self.in_reasoning else END_THINK
                continue
            if self.in_reasoning:
                self.reasoning_tokens += 1
            self._push(delta, self.detokenizer.step(token))
        return delta

    def finish(self) -> Delta:
        """What was held back: the bytes of an unfinished character, text that might have
        begun a stop string that never came."""
        delta = Delta()
        if not self.stopped:
            self._end_channel(delta)
        return delta

    def _push(self, delta: Delta, text: str) -> None:
        """Detokenized text through the stop strings into the delta."""
        shown, self.stopped = self.matcher.push(text)
        self._emit(delta, shown)

    def _end_channel(self, delta: Delta) -> None:
        """Everything held back, before the channel switches or the output ends."""
        self._push(delta, self.detokenizer.flush())
        if not self.stopped:
            self._emit(delta, self.matcher.flush())

    def _emit(self, delta: Delta, text: str) -> None:
        if not text:
            return
        if not self.in_reasoning or self.reasoning_output is ReasoningOutput.INLINE:
            delta.content += text
        elif self.reasoning_output is ReasoningOutput.SEPARATE:
            delta.reasoning += text


@functools.cache
def _byte_of_char() -> dict[str, int]:
    """Byte-level BPE's alphabet: the printable character that stands for each byte."""
    return {char: byte for byte, char in bytes_to_unicode().items()}


def token_bytes(tokenizer: Tokenizer, token_id: int) -> bytes:
    """One token's own bytes, as logprobs report them: a byte-level piece may hold part of a
    UTF-8 character, which decoding the token alone would lose."""
    piece = tokenizer.id_to_token(token_id)
    if piece is None:  # an id the model has but the tokenizer does not (padded vocab)
        return b""
    byte_of = _byte_of_char()
    if all(char in byte_of for char in piece):
        return bytes(byte_of[char] for char in piece)
    return tokenizer.decode([token_id], skip_special_tokens=False).encode()
