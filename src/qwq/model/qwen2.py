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
from qwq.model.kv_cache import KVCache, LayerCache
from qwq.model.layers import MLP, RMSNorm, RotaryEmbedding


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
        cache: LayerCache | None = None,
        slots: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.native_step is not None and x.shape[1] == 1 and x.dtype == torch.float32 and cache is not None:
            return self.native_step(x, cache.k, cache.v, cos, sin, slots, positions)  # what the lines below compute
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, positions, mask, end, cache, slots)
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
        # the KV cache's dtype, a load-time choice (qwq.load's kv_cache: bfloat16 for quantized models); None
        # keeps the activations' dtype. Set on the model so whoever allocates a cache (the engine) need not know.
        self.kv_cache_dtype: torch.dtype | None = None

    def cache_dtype(self) -> torch.dtype:
        return self.kv_cache_dtype or self.model.norm.weight.dtype

    def new_cache(self, slots: int, max_seq_len: int) -> KVCache:
        """A KV cache for `slots` sequences of up to `max_seq_len` positions, in `cache_dtype()`."""
        return KVCache(self.config, slots, max_seq_len, self.cache_dtype(), self.model.norm.weight.device)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor | None = None,
        cache: KVCache | None = None,
        slots: torch.Tensor | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """input_ids (B, T) -> logits (B, T, vocab), or (B, 1, vocab) with `last_only`.

        Without a cache the call covers whole sequences from position 0. With one (owned by the caller: the
        engine), row b sits at `positions[b]` (B, T) of cache slot `slots[b]` (default: slot b), attends to
        everything cached before it in that slot, and extends it. One sequence gets the unmasked (T = 1) or
        plainly causal (from position 0) attention of a cacheless call, so cached decoding computes what a
        full recomputation computes.
        """
        batch, seq = input_ids.shape
        device = input_ids.device
        if positions is None:
            positions = torch.arange(seq, device=device).expand(batch, seq)
        if cache is None:
            if int(positions[:, 0].max()) != 0:
                raise InvalidRequestError("positions after 0 need a KV cache (the engine passes one)")
            end, mask = seq, None
        else:
            end = int(positions.max()) + 1
            if end > cache.max_seq_len:
                raise InvalidRequestError(f"position {end - 1} is past the KV cache's {cache.max_seq_len} positions")
            if slots is None:
                slots = torch.arange(batch, device=device)
            plain = batch == 1 and (seq == 1 or seq == end)
            keys = torch.arange(end, device=device)
            mask = None if plain else (keys[None, None, :] <= positions[:, :, None])[:, None]  # (B, 1, T, end)
        x = self._embed(input_ids)  # (B, T, hidden)
        cos, sin = self.model.rotary_emb(positions.reshape(-1), x.dtype)  # (B*T, D)
        cos, sin = cos.view(batch, 1, seq, -1), sin.view(batch, 1, seq, -1)  # (B, 1, T, D)
        for index, layer in enumerate(self.model.layers):
            layer_cache = None if cache is None else cache.layer(index)
            x = layer(x, cos, sin, positions, mask, end, layer_cache, slots)
        if last_only:
            x = x[:, -1:]
        return self.lm_head(self.model.norm(x))

    def _embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Embedding rows in the activation dtype (a quantized model keeps its table in bfloat16)."""
        return self.model.embed_tokens(input_ids).to(self.model.norm.weight.dtype)
