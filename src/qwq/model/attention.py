"""Grouped-query self-attention with Q/K/V bias, rotary positions and an optional KV cache.

This is the path of prompt chunks (and of float models' decode); a quantized model's one-token decode runs in
C++ (qwq/quant/step_kernels.cpp, `decode_attention`), which computes the same from the same cache.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from qwq.config import ModelConfig
from qwq.model.kv_cache import LayerCache
from qwq.model.layers import apply_rotary
from qwq.model.row_tiles import row_tiles


class Attention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        hidden = config.hidden_size
        self.q_proj = nn.Linear(hidden, self.num_heads * self.head_dim, bias=True)
        self.k_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=True)
        self.v_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=True)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, hidden, bias=False)
        # q, k and v in one quantized matrix, set by qwq.quant.decode_path after loading (then q/k/v_proj are gone)
        self.qkv_proj: nn.Module | None = None

    def _project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.qkv_proj is None:
            return self.q_proj(x), self.k_proj(x), self.v_proj(x)
        kv_width = self.num_kv_heads * self.head_dim
        return self.qkv_proj(x).split([self.num_heads * self.head_dim, kv_width, kv_width], dim=-1)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor | None,
        end: int,
        cache: LayerCache | None = None,
        slots: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: (B, T, hidden); positions (B, T); mask: (B, 1, T, end) booleans, True where a query may attend to
        a key, or None for one query (attends to everything) or a whole sequence from position 0 (plain
        causal). With a cache, row b is written to and reads from cache slot `slots[b]`."""
        batch, seq, _ = x.shape
        q, k, v = self._project(x)
        q = q.view(batch, seq, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = k.view(batch, seq, self.num_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        v = v.view(batch, seq, self.num_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        q = apply_rotary(q, cos, sin)
        k = apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.update(slots, positions, k, v, end)  # (B, Hkv, end, D), in the cache's dtype
            k, v = k.to(q.dtype), v.to(q.dtype)  # a narrower cache's values, exactly, for SDPA (no-op if equal)
        if cache is not None and seq > 1:
            out = _tiled_attention(q, k, v, positions)
        else:
            causal = mask is None and seq > 1
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=True)
        return self.o_proj(out.transpose(1, 2).reshape(batch, seq, self.num_heads * self.head_dim))


def _tiled_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """A cached chunk's attention ROW_TILE queries at a time (see row_tiles.py), each tile over exactly the keys
    up to its last row, causally masked: q (B, H, T, D), k/v (B, Hkv, S, D) -> (B, H, T, D)."""
    tiles = []
    keys = torch.arange(k.shape[2], device=q.device)
    for start, end in row_tiles(q.shape[2]):
        rows = positions[:, start:end]  # (B, t)
        length = int(rows[:, -1].max()) + 1
        mask = (keys[None, None, :length] <= rows[:, :, None])[:, None]  # (B, 1, t, length)
        tile = q[:, :, start:end]
        tiles.append(
            F.scaled_dot_product_attention(tile, k[:, :, :length], v[:, :, :length], attn_mask=mask, enable_gqa=True)
        )
    return torch.cat(tiles, dim=2)
