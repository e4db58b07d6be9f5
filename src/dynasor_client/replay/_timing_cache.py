"""KV memory of the replay engine's timing model: a block pool with an LRU prefix cache (like vLLM's).

Memory is counted in tokens against the profile's ``kv_capacity_tokens``. A request's full prompt
blocks (``block_size`` tokens each) live in a shared cache, identified like vLLM's by the hash chain
of their prefix: block ``i``'s key is ``hash((key of block i-1, the block's token keys))``, so two
prompts share block ``i`` only if they agree on every token up to its end. Everything else a request
needs (the partial last prompt block and the whole output) is private to it.

A cached block is *pinned* while a running request uses it (reference count > 0) and *evictable*
otherwise; evictable blocks stay cached, costing memory, until an admission needs the space, and are
then evicted least recently released first. A request's blocks are released tail first, so its
prompt is evicted from the end and a shorter shared prefix survives longer (vLLM does the same).
Keys are 64-bit Python hashes: a collision (probability about ``blocks**2 / 2**64``) would only
count a spurious cache hit.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence

__all__ = ["BlockPool", "block_hashes"]


def block_hashes(prompt_keys: Sequence[Hashable], block_size: int) -> tuple[int, ...]:
    """The hash-chain keys of the full blocks of a prompt given as per-token keys."""
    keys: list[int] = []
    parent = 0
    for start in range(0, len(prompt_keys) - block_size + 1, block_size):
        parent = hash((parent, tuple(prompt_keys[start : start + block_size])))
        keys.append(parent)
    return tuple(keys)


class BlockPool:
    """Token-counted KV memory: private reservations plus a reference-counted LRU block cache."""

    __slots__ = ("_evictable", "_refs", "block_size", "capacity_tokens", "evicted_blocks", "used_tokens")

    def __init__(self, capacity_tokens: int, block_size: int) -> None:
        self.capacity_tokens = capacity_tokens
        self.block_size = block_size
        self.used_tokens = 0
        """Private reservations plus every cached block (pinned or evictable)."""
        self.evicted_blocks = 0
        self._refs: dict[int, int] = {}
        self._evictable: OrderedDict[int, None] = OrderedDict()

    @property
    def cached_blocks(self) -> int:
        return len(self._refs)

    @property
    def evictable_tokens(self) -> int:
        return len(self._evictable) * self.block_size

    def allocate(self, hashes: Sequence[int], private_tokens: int, max_hit_blocks: int) -> int | None:
        """Reserve a request's memory; the leading cached blocks it hits, or None if it does not fit.

        ``hashes`` are the request's full prompt blocks; ``private_tokens`` the rest of its
        reservation. Blocks already cached are shared (pinned) rather than allocated again; only the
        leading run of them, at most ``max_hit_blocks``, saves prefill work (the count returned).
        Nothing changes when the request does not fit even after evicting every evictable block.
        """
        refs, evictable, bs = self._refs, self._evictable, self.block_size
        present = [h in refs for h in hashes]
        new_blocks = present.count(False)
        own_evictable = sum(1 for h, p in zip(hashes, present, strict=True) if p and refs[h] == 0)
        need = new_blocks * bs + private_tokens
        free = self.capacity_tokens - self.used_tokens
        if need > free + (len(evictable) - own_evictable) * bs:
            return None
        for h, p in zip(hashes, present, strict=True):
            if p:
                if refs[h] == 0:
                    del evictable[h]
                refs[h] += 1
        while free < need:
            victim, _ = evictable.popitem(last=False)
            del refs[victim]
            free += bs
            self.used_tokens -= bs
            self.evicted_blocks += 1
        for h, p in zip(hashes, present, strict=True):
            if not p:
                refs[h] = 1
        self.used_tokens += need
        hits = 0
        while hits < max_hit_blocks and present[hits]:
            hits += 1
        return hits

    def release(self, hashes: Sequence[int], private_tokens: int) -> None:
        """Return a request's private tokens and unpin its blocks (which stay cached, evictable)."""
        refs, evictable = self._refs, self._evictable
        for h in reversed(hashes):
            count = refs[h] - 1
            refs[h] = count
            if count == 0:
                evictable[h] = None
        self.used_tokens -= private_tokens
