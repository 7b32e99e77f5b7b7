"""One request inside the engine: waiting with its prompt's block hashes, then running with its
prompt on the device, its cache blocks and its progress."""

from __future__ import annotations

import dataclasses

import torch

from services.decoder.prefix_cache import BlockHash
from services.decoder.types import GenerateRequest


@dataclasses.dataclass
class Segment:
    """Multimodal embeddings already on the model's device and in its dtype."""

    start: int
    end: int
    embeddings: torch.Tensor


@dataclasses.dataclass(frozen=True)
class Pending:
    """A request waiting for a row and cache blocks, hashed once for the prefix cache."""

    request: GenerateRequest
    block_hashes: tuple[BlockHash, ...]  # empty when prefix caching is off

    @property
    def request_id(self) -> str:
        return self.request.request_id


@dataclasses.dataclass(eq=False)  # identity: two requests are never equal
class Sequence:
    request: GenerateRequest
    row: int  # its row in the running batch: sampler state and slot table are indexed by it
    blocks: list[int]
    prompt_ids: torch.Tensor  # [prompt] on the device
    prompt_positions: torch.Tensor  # [prompt] on the device
    segments: list[Segment]
    max_tokens: int  # max_tokens, clamped so prompt + completion fits max_model_len
    block_hashes: tuple[BlockHash, ...] = ()  # of its full prompt blocks (prefix caching)
    cached: int = 0  # tokens whose K/V is in the cache
    reused: int = 0  # prompt tokens whose K/V came from the prefix cache, not computed
    output: list[int] = dataclasses.field(default_factory=list)

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def prompt_len(self) -> int:
        return len(self.request.input_ids)

    @property
    def prefilled(self) -> bool:
        return self.cached >= self.prompt_len

    @property
    def next_position(self) -> int:
        """Position id of the token decoded next (the last one sampled): generated tokens
        continue one by one after the prompt's last position, explicit or not."""
        last_prompt = (
            self.request.position_ids[-1] if self.request.position_ids else self.prompt_len - 1
        )
        return last_prompt + self.cached - self.prompt_len + 1

    def splice(self, embeds: torch.Tensor, start: int, n: int) -> None:
        """In the packed embeddings, where prompt tokens [cached, cached + n) sit at
        [start, start + n), put each multimodal segment in place of its placeholder tokens."""
        lo, hi = self.cached, self.cached + n
        for segment in self.segments:
            a, b = max(segment.start, lo), min(segment.end, hi)
            if a < b:
                target = slice(start + a - lo, start + b - lo)
                embeds[target] = segment.embeddings[a - segment.start : b - segment.start]
