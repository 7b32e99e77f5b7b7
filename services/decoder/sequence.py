"""One request inside the engine: waiting with its prompt's block hashes, then running with its
cache blocks and its progress. Pure Python: what the model runner keeps on its device for a
request (prompt ids, positions, multimodal embeddings) rides along, opaque, in ``inputs``, and
so does its constraint's matcher in ``grammar``, freed with the request."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from services.decoder.block_pool import BlockHash
    from services.decoder.types import GenerateRequest


@dataclasses.dataclass(frozen=True)
class Pending:
    """A request waiting for a row and cache blocks, hashed once for the prefix cache."""

    request: GenerateRequest
    block_hashes: tuple[BlockHash, ...]  # empty when prefix caching is off
    grammar: object = None  # its constraint's matcher (constraints.GrammarState), compiled

    @property
    def request_id(self) -> str:
        return self.request.request_id


@dataclasses.dataclass(eq=False)  # identity: two requests are never equal
class Sequence:
    request: GenerateRequest
    row: int  # its row in the running batch: sampler state and slot table are indexed by it
    max_tokens: int  # max_tokens, clamped so prompt + completion fits max_model_len
    blocks: list[int] = dataclasses.field(default_factory=list)
    block_hashes: tuple[BlockHash, ...] = ()  # of its full prompt blocks (prefix caching)
    cached: int = 0  # tokens whose K/V is in the cache (0 again after a preemption)
    reused: int = 0  # prompt tokens whose K/V came from the prefix cache, not computed
    output: list[int] = dataclasses.field(default_factory=list)
    inputs: object = None  # the model runner's copy of the prompt on its device
    grammar: object = None  # its constraint's matcher, kept across preemptions (opaque here)

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def prompt_len(self) -> int:
        return len(self.request.input_ids)

    @property
    def context_len(self) -> int:
        """Tokens whose K/V must be cached before it can decode: its prompt, and after a
        preemption also every generated token but the last (which the next decode feeds)."""
        return self.prompt_len + max(len(self.output) - 1, 0)

    @property
    def prefilled(self) -> bool:
        return self.cached >= self.context_len

    @property
    def next_position(self) -> int:
        """Position id of the token fed next (on every axis): generated tokens continue one by
        one from the largest prompt position + 1, explicit or not."""
        return self.position_after_prompt(self.cached - self.prompt_len)

    def position_after_prompt(self, i: int) -> int:
        """Position id of generated token i."""
        positions = self.request.positions
        return (positions.next_position if positions else self.prompt_len) + i
