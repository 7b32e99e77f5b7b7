"""Incremental detokenizing at O(1) per token.

``tokenizers``' ``DecodeStream`` is TGI's prefix/read-offset scheme (vLLM's is the same): each
step decodes only the ids since the last text it returned, plus those ids' predecessors for
context, and holds back a token whose text ends in U+FFFD (part of a UTF-8 character whose other
bytes are still to come) until a later one completes it. Alone it never returns what it still
holds when the stream ends (a character cut by max_tokens, bytes that never form one);
``Detokenizer.flush`` does, so the pieces always join to what a full decode of the ids gives.
"""

from __future__ import annotations

from tokenizers import Tokenizer
from tokenizers.decoders import DecodeStream


class Detokenizer:
    """One stream of generated ids -> text pieces; special tokens skipped."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self._reset()

    def _reset(self) -> None:
        self._stream = DecodeStream(skip_special_tokens=True)
        self._context: list[int] = []  # the ids of the last text returned
        self._held: list[int] = []  # the ids fed since, whose text is still held back

    def step(self, token_id: int) -> str:
        """The text this token completes ("" while it is held back)."""
        self._held.append(token_id)
        text = self._stream.step(self._tokenizer, token_id)
        if text is None:
            return ""
        self._context, self._held = self._held, []
        return text

    def flush(self) -> str:
        """What is still held back, as a full decode shows it (U+FFFD for bytes that form no
        character); the stream then starts afresh."""
        rest = ""
        if self._held:
            decode = self._tokenizer.decode
            before = decode(self._context, skip_special_tokens=True)
            rest = decode(self._context + self._held, skip_special_tokens=True)[len(before) :]
        self._reset()
        return rest
