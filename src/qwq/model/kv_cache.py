"""The KV cache: static key/value buffers per layer, allocated once by the engine and written by position index.

The engine owns it (model modules hold no cache state), so several engines — a server's and an in-process
caller's — can run one set of weights side by side. Static shapes, as in gpt-fast: buffers of
`slots` sequences by `max_seq_len` positions, so per-token work allocates nothing that grows with the text.
The buffers' dtype may be narrower than the activations' (bfloat16 for quantized models: half the memory and
half the bytes each decode step reads): keys and values are rounded to it when written.
"""

from __future__ import annotations

import torch

from qwq.config import ModelConfig


class KVCache:
    def __init__(
        self, config: ModelConfig, slots: int, max_seq_len: int, dtype: torch.dtype, device: torch.device | str
    ) -> None:
        shape = (slots, config.num_key_value_heads, max_seq_len, config.head_dim)  # (slots, Hkv, S, D)
        layers = config.num_hidden_layers
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]

    @staticmethod
    def bytes_per_position(config: ModelConfig, dtype: torch.dtype) -> int:
        """What one position of one sequence takes: a key and a value per layer and KV head."""
        return 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * dtype.itemsize

    @property
    def dtype(self) -> torch.dtype:
        return self.k[0].dtype

    @property
    def slots(self) -> int:
        return self.k[0].shape[0]

    @property
    def max_seq_len(self) -> int:
        return self.k[0].shape[2]

    def layer(self, index: int) -> LayerCache:
        return LayerCache(self.k[index], self.v[index])


class LayerCache:
    """One layer's buffers, (slots, Hkv, S, D) each."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor) -> None:
        self.k, self.v = k, v

    def update(
        self, slots: torch.Tensor, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor, end: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Row b of k, v (B, Hkv, T, D) goes to slot `slots[b]` at `positions[b]` (B, T), rounded to the cache's
        dtype; returns those slots' first `end` positions, (B, Hkv, end, D), in the cache's dtype."""
        k, v = k.to(self.k.dtype), v.to(self.v.dtype)
        if slots.numel() == 1:  # one sequence: plain index_copy into its slot, and a view back (no gather)
            slot = int(slots[0])
            self.k[slot].index_copy_(1, positions[0], k[0])
            self.v[slot].index_copy_(1, positions[0], v[0])
            return self.k[slot : slot + 1, :, :end], self.v[slot : slot + 1, :, :end]
        self.k[slots[:, None], :, positions] = k.transpose(1, 2)  # indexed view: (B, T, Hkv, D)
        self.v[slots[:, None], :, positions] = v.transpose(1, 2)
        return self.k[slots, :, :end], self.v[slots, :, :end]
