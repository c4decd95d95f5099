"""The Qwen2 decoder-only transformer (QwQ-32B-Preview, Qwen2.5), written from the paper-level maths.

Module names are HF's (`model.layers.N.self_attn.q_proj`, `lm_head`, ...), so a safetensors checkpoint
loads with no name map. References: Qwen2 technical report (arXiv:2407.10671); HF transformers'
`modeling_qwen2.py` (the numerics we match); gpt-fast (static KV cache, explicit positions).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from qwq.config import ModelConfig
from qwq.errors import InvalidRequestError
from qwq.model.attention import Attention
from qwq.model.kv_cache import KVCache
from qwq.model.layers import MLP, RMSNorm, RotaryEmbedding


def causal_mask(positions: torch.Tensor, end: int) -> torch.Tensor | None:
    """(T, end) booleans, True where a query may attend to a key, or None when the pattern needs no
    tensor: one new token sees every earlier position, and a whole sequence from position 0 is plainly
    causal (SDPA's fused `is_causal` path; see `Attention.forward`)."""
    if positions.shape[0] == 1 or positions.shape[0] == end:
        return None
    return positions[:, None] >= torch.arange(end, device=positions.device)[None, :]


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.self_attn = Attention(config)
        self.mlp = MLP(config.hidden_size, config.intermediate_size)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        # the whole layer's decode step in one C++ call (qwq.quant.decode_path sets it for quantized models)
        self.native_step: Callable | None = None

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor | None,
        end: int,
        slots: torch.Tensor | None = None,
    ) -> torch.Tensor:
        cache = self.self_attn.kv_cache
        if self.native_step is not None and x.shape[1] == 1 and x.dtype == torch.float32 and cache is not None:
            return self.native_step(x, cache.k, cache.v, cos, sin, slots, positions)  # what the lines below compute
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, positions, mask, end, slots)
        return x + self.mlp(self.post_attention_layernorm(x))


class Qwen2Model(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config.head_dim, config.rope_theta)


class Qwen2ForCausalLM(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.model = Qwen2Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @property
    def cache_len(self) -> int:
        """Positions the KV cache can hold; 0 when no cache is set up."""
        cache = self.model.layers[0].self_attn.kv_cache
        return 0 if cache is None else cache.max_seq_len

    def setup_cache(self, batch_size: int, max_seq_len: int) -> None:
        """Allocate a KV cache for `batch_size` sequences of up to `max_seq_len` positions, or reuse one as large."""
        if self.cache_len >= max_seq_len and self.model.layers[0].self_attn.kv_cache.k.shape[0] == batch_size:
            return
        weight = self.model.norm.weight  # the activations' dtype and device
        for layer in self.model.layers:
            attn = layer.self_attn
            attn.kv_cache = KVCache(
                batch_size, attn.num_kv_heads, max_seq_len, attn.head_dim, weight.dtype, weight.device
            )

    def drop_cache(self) -> None:
        for layer in self.model.layers:
            layer.self_attn.kv_cache = None

    def forward(self, input_ids: torch.Tensor, start_pos: int = 0, last_only: bool = False) -> torch.Tensor:
        """input_ids: (B, T) at positions start_pos..start_pos+T-1 -> logits (B, T or 1, vocab).

        Without a KV cache the call must cover the whole sequence (start_pos 0); with one, earlier
        positions come from the cache, which this call extends.
        """
        seq = input_ids.shape[1]
        end = start_pos + seq
        if self.cache_len == 0 and start_pos != 0:
            raise InvalidRequestError("start_pos > 0 needs a KV cache (call setup_cache first)")
        if self.cache_len and end > self.cache_len:
            raise InvalidRequestError(f"position {end - 1} is past the KV cache's {self.cache_len} positions")
        device = input_ids.device
        positions = torch.arange(start_pos, end, device=device)  # (T,)
        mask = causal_mask(positions, end)
        x = self._embed(input_ids)  # (B, T, hidden)
        cos, sin = self.model.rotary_emb(positions, x.dtype)
        for layer in self.model.layers:
            x = layer(x, cos, sin, positions, mask, end)
        if last_only:
            x = x[:, -1:]
        return self.lm_head(self.model.norm(x))

    def _embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Embedding rows in the activation dtype (a quantized model keeps its table in bfloat16)."""
        return self.model.embed_tokens(input_ids).to(self.model.norm.weight.dtype)

    def forward_slots(self, input_ids: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """Continuous batching: row b of input_ids (B, T) sits at `positions[b]` (B, T) of KV-cache slot
        `slots[b]`; returns the logits of each row's last position, (B, vocab).

        Used for one prompt at a time (B = 1) and for a decode step of every running sequence (T = 1).
        A single sequence gets the same unmasked (or plainly causal) attention as `forward`, so one request
        alone computes exactly what the single-stream path computes.
        """
        batch, seq = input_ids.shape
        end = int(positions.max()) + 1
        if end > self.cache_len:
            raise InvalidRequestError(f"position {end - 1} is past the KV cache's {self.cache_len} positions")
        x = self._embed(input_ids)  # (B, T, hidden)
        cos, sin = self.model.rotary_emb(positions.reshape(-1), x.dtype)  # (B*T, D)
        cos, sin = cos.view(batch, 1, seq, -1), sin.view(batch, 1, seq, -1)  # (B, 1, T, D)
        if batch == 1 and (seq == end or seq == 1):
            mask = None  # one sequence: everything before it (T = 1) or plainly causal from 0 (T = end)
        else:
            keys = torch.arange(end, device=input_ids.device)
            mask = (keys[None, None, :] <= positions[:, :, None])[:, None]  # (B, 1, T, end)
        for layer in self.model.layers:
            x = layer(x, cos, sin, positions, mask, end, slots)
        return self.lm_head(self.model.norm(x[:, -1]))  # (B, vocab)
