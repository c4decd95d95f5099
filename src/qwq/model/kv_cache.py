"""A static key/value cache: buffers allocated once per sequence budget and written by position index.

Static shapes (as in gpt-fast) keep per-token work free of allocations that grow with the sequence.
"""

from __future__ import annotations

import torch
from torch import nn


class KVCache(nn.Module):
    def __init__(
        self,
        batch_size: int,
        num_kv_heads: int,
        max_seq_len: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        super().__init__()
        shape = (batch_size, num_kv_heads, max_seq_len, head_dim)  # (B, Hkv, S, D)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    @property
    def max_seq_len(self) -> int:
        return self.k.shape[2]

    def update(
        self, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor, end: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, Hkv, T, D) at `positions` and return the cache's first `end` positions."""
        self.k.index_copy_(2, positions, k)
        self.v.index_copy_(2, positions, v)
        return self.k[:, :, :end], self.v[:, :, :end]

    def update_slots(
        self, slots: torch.Tensor, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor, end: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Continuous batching: row b of k, v (B, Hkv, T, D) goes to cache slot `slots[b]` at `positions[b]`
        (B, T); returns those slots' first `end` positions, (B, Hkv, end, D)."""
        self.k[slots[:, None], :, positions] = k.transpose(1, 2)  # indexed view: (B, T, Hkv, D)
        self.v[slots[:, None], :, positions] = v.transpose(1, 2)
        return self.k[slots, :, :end], self.v[slots, :, :end]
