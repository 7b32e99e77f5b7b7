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
    cached: int = 0  # tokens whose K/V is in the cache (0 again after a preemption)
    reused: int = 0  # prompt tokens whose K/V came from the prefix cache, not computed
    output: list[int] = dataclasses.field(default_factory=list)

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
        """Position id of the token fed next: generated tokens continue one by one after the
        prompt's last position, explicit or not."""
        return self._position_after_prompt(self.cached - self.prompt_len)

    def chunk(self, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Ids and positions of context tokens [cached, cached + n): prompt tokens, then
        (recomputing after a preemption) generated ones."""
        lo, hi = self.cached, self.cached + n
        ids, positions = [self.prompt_ids[lo:hi]], [self.prompt_positions[lo:hi]]
        if hi > self.prompt_len:
            a, b = max(lo, self.prompt_len) - self.prompt_len, hi - self.prompt_len
            ids.append(torch.tensor(self.output[a:b], dtype=torch.long, device=device))
            after = range(self._position_after_prompt(a), self._position_after_prompt(b))
            positions.append(torch.tensor(after, dtype=torch.long, device=device))
        return torch.cat(ids), torch.cat(positions)

    def _position_after_prompt(self, i: int) -> int:
        """Position id of generated token i."""
        last = self.request.position_ids[-1] if self.request.position_ids else self.prompt_len - 1
        return last + 1 + i

    def splice(self, embeds: torch.Tensor, start: int, n: int) -> None:
        """In the packed embeddings, where prompt tokens [cached, cached + n) sit at
        [start, start + n), put each multimodal segment in place of its placeholder tokens."""
        lo, hi = self.cached, self.cached + n
        for segment in self.segments:
            a, b = max(segment.start, lo), min(segment.end, hi)
            if a < b:
                target = slice(start + a - lo, start + b - lo)
                embeds[target] = segment.embeddings[a - segment.start : b - segment.start]
