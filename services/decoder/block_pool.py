"""The KV cache's block allocator, with automatic prefix caching (as vLLM's). Pure Python: the
scheduler imports it without torch; the hashes it matches come from prefix_cache.py.

Once a request's prompt block is written, the pool remembers it under its chained hash; a later
prompt with the same chain of hashes reuses the block instead of computing it again.

Blocks are reference counted. A cached block nobody uses any more stays cached but evictable:
it counts as free, and is handed out again (least recently used first) only when the pool has
no never-cached block left, at which point its hash is forgotten.
"""

from __future__ import annotations

import collections

BlockHash = bytes


class BlockPool:
    """Hands out cache blocks; with ``prefix_caching`` it also keeps and matches prompt blocks."""

    def __init__(self, num_blocks: int, prefix_caching: bool) -> None:
        self.num_blocks = num_blocks
        self.prefix_caching = prefix_caching
        self._uncached: list[int] = list(range(num_blocks - 1, -1, -1))
        self._evictable: collections.OrderedDict[int, None] = collections.OrderedDict()  # LRU
        self._refs = [0] * num_blocks
        self._by_hash: dict[BlockHash, int] = {}
        self._hash_of: dict[int, BlockHash] = {}

    @property
    def free_blocks(self) -> int:
        """Blocks a new request may take: holding no cached prefix, or cached but unused."""
        return len(self._uncached) + len(self._evictable)

    @property
    def cached_blocks(self) -> int:
        """Blocks holding a prompt block a later request may reuse (in use or evictable)."""
        return len(self._hash_of)

    def match(self, hashes: tuple[BlockHash, ...]) -> list[int]:
        """The cached blocks of the longest run of leading hashes found; takes nothing."""
        found: list[int] = []
        for h in hashes if self.prefix_caching else ():
            block = self._by_hash.get(h)
            if block is None:
                break
            found.append(block)
        return found

    def can_allocate(self, matched: list[int], fresh: int) -> bool:
        """Whether ``fresh`` new blocks fit next to the matched ones (an evictable matched block
        is counted free, so taking it uses up free space too)."""
        idle = sum(1 for b in matched if self._refs[b] == 0)
        return fresh + idle <= self.free_blocks

    def allocate(self, matched: list[int], fresh: int) -> list[int]:
        """The matched blocks, shared, followed by ``fresh`` new ones; check can_allocate first."""
        if not self.can_allocate(matched, fresh):
            raise RuntimeError(f"KV cache exhausted: {fresh} blocks asked, {self.free_blocks} free")
        for block in matched:
            self._evictable.pop(block, None)
            self._refs[block] += 1
        new = [self._take() for _ in range(fresh)]
        for block in new:
            self._refs[block] = 1
        return matched + new

    def register(self, blocks: list[int], hashes: tuple[BlockHash, ...]) -> None:
        """Remember a request's first len(hashes) blocks, written, under those hashes (again
        after each chunk: known blocks are skipped). A hash already cached (another request
        computed the same block at the same time) keeps its first block."""
        if not self.prefix_caching:
            return
        for block, h in zip(blocks[: len(hashes)], hashes, strict=True):
            if h not in self._by_hash and block not in self._hash_of:
                self._by_hash[h] = block
                self._hash_of[block] = h

    def free(self, blocks: list[int]) -> None:
        """Drop one reference to each of a request's blocks. Cached ones stay evictable, the
        last block first in line, so that a prefix is evicted from its tail: a block whose
        parent was evicted could never be matched again."""
        for block in reversed(blocks):
            self._refs[block] -= 1
            if self._refs[block] == 0:
                if block in self._hash_of:
                    self._evictable[block] = None
                else:
                    self._uncached.append(block)

    def _take(self) -> int:
        if self._uncached:
            return self._uncached.pop()
        block, _ = self._evictable.popitem(last=False)  # least recently used
        del self._by_hash[self._hash_of.pop(block)]
        return block
