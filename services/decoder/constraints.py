"""Grammar-constrained decoding with llguidance: a request's ``Constraint`` compiled against the
decoder's tokenizer, and the per-request matcher that masks each step's logits.

Why llguidance (bench/constrained.py, and the measurement in the commit that added it): its JSON
schema compile is ~10x faster than xgrammar's (48 ms vs 555 ms at a 151k vocabulary; a schema
per request is common for tool calls), its per-token masks stay far below a decode step for
both, it speaks lark (the phone action grammar, tool calls) and regex natively, puts a bad
grammar in an error state instead of raising, and depends on nothing (xgrammar pulls triton).

Compiling is the expensive part (milliseconds to tens of them), so it runs where requests are
prepared, off the engine thread, and is cached by (kind, spec): each request gets a cheap copy
of the cached matcher. The engine thread only asks each matcher for its mask and feeds it the
sampled tokens.
"""

from __future__ import annotations

import functools
import json
from typing import TYPE_CHECKING

import llguidance
import torch

from services.common.errors import InvalidInput
from services.decoder.constraint_spec import Constraint, ConstraintKind

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions

CACHED_GRAMMARS = 256
# Compact JSON, no whitespace between tokens: a model cannot stall in endless whitespace (random
# weights would, well inside max_tokens).
JSON_OPTIONS: JsonCompileOptions = {"whitespace_flexible": False}
_BITS = 32  # llguidance masks: one bit per token, in int32 words


class ConstraintCompiler:
    """Compiles constraints against one tokenizer. Thread-safe: prepare() runs it anywhere."""

    def __init__(self, tokenizer_json: str, vocab_size: int, eos_token_id: int) -> None:
        """``tokenizer_json``: the decoder's tokenizer.json text; ``vocab_size``: the model's
        logits width (may exceed the tokenizer's); ``eos_token_id``: the token a complete
        grammar allows (and forces once nothing else may follow)."""
        self.vocab_size = vocab_size
        self.eos_token_id = eos_token_id
        self.tokenizer = llguidance.LLTokenizer(
            tokenizer_json, n_vocab=vocab_size, eos_token=eos_token_id
        )
        self._template = functools.lru_cache(maxsize=CACHED_GRAMMARS)(self._compile)

    def matcher(self, constraint: Constraint) -> GrammarState:
        """A fresh matcher for one request; InvalidInput for a grammar that does not compile."""
        template = self._template(constraint.kind, constraint.spec)
        return GrammarState(
            template.deep_copy(), constraint.start_after_token_id, self.eos_token_id
        )

    def _compile(self, kind: ConstraintKind, spec: str) -> llguidance.LLMatcher:
        try:
            grammar = _grammar(kind, spec)
        except ValueError as exc:  # not JSON at all
            raise InvalidInput(f"invalid {kind.value} constraint: {exc}") from exc
        matcher = llguidance.LLMatcher(self.tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise InvalidInput(f"invalid {kind.value} constraint: {matcher.get_error()}")
        return matcher


def _grammar(kind: ConstraintKind, spec: str) -> str:
    if kind is ConstraintKind.JSON_SCHEMA:
        schema = json.loads(spec)
        if not isinstance(schema, dict):
            raise ValueError("a JSON schema is a JSON object")
        return llguidance.LLMatcher.grammar_from_json_schema(schema, JSON_OPTIONS)
    if kind is ConstraintKind.JSON_OBJECT:
        return llguidance.LLMatcher.grammar_from_json_schema({"type": "object"}, JSON_OPTIONS)
    if kind is ConstraintKind.REGEX:
        return llguidance.LLMatcher.grammar_from_regex(spec)
    return llguidance.LLMatcher.grammar_from_lark(spec)


class GrammarState:
    """One request's matcher, and whether its constraint has started (thinking first)."""

    def __init__(self, matcher: llguidance.LLMatcher, start_after: int | None, eos: int) -> None:
        self.matcher = matcher
        self.start_after = start_after
        self.eos = eos
        self.active = start_after is None

    def fill_mask(self, words: torch.Tensor) -> None:
        """The allowed tokens as a bitmask into ``words`` (a contiguous int32 CPU row); only EOS
        once the grammar is complete (llguidance's own mask says so)."""
        self.matcher.unsafe_compute_mask_ptr(words.data_ptr(), words.numel() * 4)
        if self.matcher.is_error():  # never for tokens its own mask allowed: end, do not crash
            words.zero_()
            bit = 1 << (self.eos % _BITS)
            words[self.eos // _BITS] = bit - (1 << _BITS) if bit >= 1 << (_BITS - 1) else bit

    def advance(self, token: int) -> None:
        if self.active:
            self.matcher.consume_token(token)
        elif token == self.start_after:
            self.active = True


def bitmask_words(rows: int, vocab_size: int) -> torch.Tensor:
    """A CPU buffer for ``rows`` bitmasks over ``vocab_size`` tokens."""
    return torch.zeros(rows, -(-vocab_size // _BITS), dtype=torch.int32)


def allowed(words: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Bitmask rows [n, words] -> bool [n, vocab_size]: True where the token is allowed."""
    shifts = torch.arange(_BITS, dtype=torch.int32, device=words.device)
    bits = (words[:, :, None] >> shifts) & 1
    return bits.reshape(words.shape[0], -1)[:, :vocab_size].bool()
