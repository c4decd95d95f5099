"""Automatic prefix caching: the keys and values of prompt prefixes, kept after their request so that a later
prompt that starts the same way (a system prompt, the earlier turns of a conversation, a shared few-shot
header) starts from its longest cached prefix instead of computing it again.

As in vLLM, a prompt is cut into blocks of BLOCK tokens and each block is keyed by its tokens and the block
before it (a hash chain: equal keys mean equal prefixes, and the dictionary compares the tokens, so a hash
collision can never serve the wrong entries). Blocks live in a pool of fixed size (`capacity_bytes`), shared
read-only by every request that matches them, and the least recently used leave first (with the blocks that
continue them). The engine keeps static per-slot buffers, so a hit is copied into the request's slot: a few
milliseconds for thousands of tokens, where computing them takes seconds.

Exact: outputs are identical, bit for bit, with the cache on or off. Only blocks computed by prompt prefill
are kept (decode computes with other kernels), prompt rows are computed in tiles of BLOCK rows (row_tiles.py),
and the scheduler cuts prompt chunks on a grid of the chunk size, so a prompt resumed after a cached prefix is
cut into the same tiles as it would be from the start.
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from qwq.model.kv_cache import KVCache
from qwq.model.row_tiles import ROW_TILE

BLOCK = ROW_TILE  # tokens per cached block: a block is one tile of prompt rows
DEFAULT_CAPACITY_BYTES = 1 << 30


def prompt_rows_exact(model: nn.Module) -> bool:
    """Whether every matrix of `model` computes prompt rows in tiles (qwq's quantized layers do; a float
    `nn.Linear` does not), so that cached prefixes give the same numbers as computing them."""
    return not any(isinstance(module, nn.Linear) for module in model.modules())


@dataclass
class _Block:
    id: int
    row: int  # the block's row in the pool
    key: tuple[int, tuple[int, ...]]  # (the previous block's id, or 0; this block's tokens)
    children: set[int] = field(default_factory=set)


@dataclass(frozen=True)
class PrefixCacheStats:
    blocks: int
    capacity_blocks: int
    hit_tokens: int  # prompt tokens served from the cache, over all requests
    lookup_tokens: int  # prompt tokens that could have been served (whole blocks before each prompt's last token)


class PrefixCache:
    def __init__(self, capacity_bytes: int = DEFAULT_CAPACITY_BYTES) -> None:
        self.capacity_bytes = capacity_bytes
        self._k: list[torch.Tensor] = []  # per layer (capacity, Hkv, BLOCK, D), allocated at the first store
        self._v: list[torch.Tensor] = []
        self._blocks: dict[tuple[int, tuple[int, ...]], _Block] = {}
        self._recent: OrderedDict[int, _Block] = OrderedDict()  # by id, least recently used first
        self._free: list[int] = []
        self._ids = itertools.count(1)
        self._hit_tokens = 0
        self._lookup_tokens = 0
        self._lock = threading.Lock()  # engines on several threads may share one pool

    @staticmethod
    def block_bytes(cache: KVCache) -> int:
        """Bytes one block of `cache`'s layout takes in the pool."""
        k = cache.k[0]
        return 2 * len(cache.k) * k.shape[1] * BLOCK * k.shape[3] * k.element_size()

    def stats(self) -> PrefixCacheStats:
        capacity = self._k[0].shape[0] if self._k else 0
        return PrefixCacheStats(len(self._blocks), capacity, self._hit_tokens, self._lookup_tokens)

    # -- what the engine calls
    def load(self, token_ids: Sequence[int], cache: KVCache, slot: int) -> int:
        """Copy the longest cached prefix of `token_ids` (whole blocks, leaving at least the last token to be
        computed: its logits choose the first new token) into `slot`; the number of tokens copied."""
        with self._lock:
            return self._load(token_ids, cache, slot)

    def store(self, token_ids: Sequence[int], computed: int, cache: KVCache, slot: int) -> None:
        """Keep the whole blocks of `token_ids[:computed]` (prompt tokens whose entries `slot` holds, computed by
        prefill) that are not cached yet."""
        with self._lock:
            self._store(token_ids, computed, cache, slot)

    def _load(self, token_ids: Sequence[int], cache: KVCache, slot: int) -> int:
        usable = (len(token_ids) - 1) // BLOCK
        self._lookup_tokens += usable * BLOCK
        chain = self._chain(token_ids, usable) if self._compatible(cache) else []
        if not chain:
            return 0
        for block in reversed(chain):  # the root ends most recent: leaves are evicted before what they extend
            self._recent.move_to_end(block.id)
        rows = torch.tensor([block.row for block in chain], device=cache.k[0].device)
        count = len(chain) * BLOCK
        for pool, buffers in ((self._k, cache.k), (self._v, cache.v)):
            for stored, buffer in zip(pool, buffers, strict=True):
                heads, dim = buffer.shape[1], buffer.shape[3]
                target = buffer[slot, :, :count].view(heads, len(chain), BLOCK, dim)
                target.copy_(stored.index_select(0, rows).transpose(0, 1))
        self._hit_tokens += count
        return count

    def _store(self, token_ids: Sequence[int], computed: int, cache: KVCache, slot: int) -> None:
        if not self._ensure_pool(cache):
            return
        parent, chain, new = 0, [], []
        for index in range(computed // BLOCK):
            key = (parent, tuple(token_ids[index * BLOCK : (index + 1) * BLOCK]))
            block = self._blocks.get(key)
            if block is None:
                row = self._take_row(protected={b.id for b in chain})
                if row is None:
                    break
                block = _Block(next(self._ids), row, key)
                self._blocks[key] = block
                self._recent[block.id] = block
                if parent:
                    self._recent[parent].children.add(block.id)
                new.append((index, block))
            chain.append(block)
            parent = block.id
        for block in reversed(chain):  # the root ends most recent, as in `load`
            self._recent.move_to_end(block.id)
        if not new:
            return
        rows = torch.tensor([block.row for _, block in new], device=cache.k[0].device)
        starts = [index * BLOCK for index, _ in new]
        for pool, buffers in ((self._k, cache.k), (self._v, cache.v)):
            for stored, buffer in zip(pool, buffers, strict=True):
                pieces = torch.stack([buffer[slot, :, start : start + BLOCK] for start in starts])  # (n, Hkv, B, D)
                stored.index_copy_(0, rows, pieces)

    # -- the pool
    def _chain(self, token_ids: Sequence[int], usable: int) -> list[_Block]:
        chain: list[_Block] = []
        parent = 0
        for index in range(usable):
            block = self._blocks.get((parent, tuple(token_ids[index * BLOCK : (index + 1) * BLOCK])))
            if block is None:
                break
            chain.append(block)
            parent = block.id
        return chain

    def _compatible(self, cache: KVCache) -> bool:
        if not self._k:
            return False
        stored, buffer = self._k[0], cache.k[0]
        same_layout = stored.shape[1:] == (buffer.shape[1], BLOCK, buffer.shape[3]) and len(self._k) == len(cache.k)
        return same_layout and stored.dtype == buffer.dtype and stored.device == buffer.device

    def _ensure_pool(self, cache: KVCache) -> bool:
        """Allocate the pool for `cache`'s layout at the first store (pages are touched only as blocks fill)."""
        if self._k:
            return self._compatible(cache)
        capacity = self.capacity_bytes // self.block_bytes(cache)
        if capacity < 1:
            return False
        buffer = cache.k[0]
        shape = (capacity, buffer.shape[1], BLOCK, buffer.shape[3])
        self._k = [torch.empty(shape, dtype=buffer.dtype, device=buffer.device) for _ in cache.k]
        self._v = [torch.empty(shape, dtype=buffer.dtype, device=buffer.device) for _ in cache.v]
        self._free = list(range(capacity - 1, -1, -1))
        return True

    def _take_row(self, protected: set[int]) -> int | None:
        """A free pool row, evicting the least recently used block (and what continues it) if need be; never a
        block of the chain being stored (`protected`): None when only those are left."""
        while not self._free:
            victim = next((b for b in self._recent.values() if b.id not in protected), None)
            if victim is None:
                return None
            self._evict(victim)
        return self._free.pop()

    def _evict(self, block: _Block) -> None:
        for child_id in list(block.children):
            if (child := self._recent.get(child_id)) is not None:
                self._evict(child)
        del self._blocks[block.key], self._recent[block.id]
        parent = self._recent.get(block.key[0])
        if parent is not None:
            parent.children.discard(block.id)
        self._free.append(block.row)
