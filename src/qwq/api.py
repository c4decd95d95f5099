"""The public Python API: `qwq.load(...)` and the `Model` it returns.

`Model` bundles the network, its tokenizer and the checkpoint's sampling defaults behind plain calls:
`logits`, `generate` (ids in, ids out), `chat` (messages in, text or a stream of text out).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from qwq.config import GenerationDefaults, ModelConfig
from qwq.engine.generate import GenerateOptions, TextStream, check_prompt, generate_tokens
from qwq.engine.sampling import SamplingParams
from qwq.errors import InvalidRequestError, ModelLoadError
from qwq.local_models import LOCAL_MODELS, fetch
from qwq.model.qwen2 import Qwen2ForCausalLM
from qwq.presets import PRESETS
from qwq.quant.linear import QuantizedLinear
from qwq.quant.swap import quantize_linears
from qwq.tokenizer.chat_template import Message
from qwq.tokenizer.tokenizer import Tokenizer
from qwq.weights import safetensors as safetensors_weights
from qwq.weights.gguf import GGUFFile
from qwq.weights.loader import build_empty, load_weights

logger = logging.getLogger(__name__)

DEFAULT_MAX_NEW_TOKENS = 2048
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
    ) -> None:
        self.network = network
        self.tokenizer = tokenizer
        self.generation_defaults = generation_defaults
        self.source = source

    @property
    def config(self) -> ModelConfig:
        return self.network.config

    @property
    def device(self) -> torch.device:
        return self.network.model.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.network.model.embed_tokens.weight.dtype

    @property
    def context_length(self) -> int:
        return self.config.max_position_embeddings

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

    def _options(
        self,
        max_new_tokens: int | None,
        stop: Sequence[str] | str | None,
        stop_token_ids: Sequence[int] | None,
        ignore_eos: bool,
        seed: int | None,
        sampling: dict[str, Any],
    ) -> GenerateOptions:
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
            max_new_tokens=DEFAULT_MAX_NEW_TOKENS if max_new_tokens is None else max_new_tokens,
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
        options = self._options(max_new_tokens, None, stop_token_ids, ignore_eos, seed, sampling)
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
        options = self._options(max_new_tokens, stop, None, False, seed, sampling)
        text = TextStream(generate_tokens(self.network, prompt_ids, options, self.context_length), tokenizer, options)
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


def _load_gguf(path: Path, dtype: torch.dtype, device: torch.device, quant: str | None, group_size: int) -> Model:
    gguf = GGUFFile(path)
    config = gguf.model_config()
    tokenizer = Tokenizer.from_gguf(gguf)
    network = _empty_network(config, quant, group_size)
    tensors = gguf.tensors(torch.float32 if quant else dtype)  # quantize from full precision
    network = load_weights(network, tensors, str(path), dtype, device)
    return Model(network, tokenizer, GenerationDefaults(eos_token_ids=_eos_ids(config, tokenizer)), str(path))


def _load_hf_dir(
    directory: Path, dtype: torch.dtype, device: torch.device, quant: str | None, group_size: int
) -> Model:
    config = ModelConfig.from_json_file(directory / "config.json")
    tokenizer = Tokenizer.from_hf_dir(directory)
    generation_file = directory / "generation_config.json"
    generation_data: dict[str, Any] = {}
    if generation_file.is_file():
        try:
            generation_data = json.loads(generation_file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelLoadError(f"{generation_file}: not valid JSON ({exc})") from None
    defaults = GenerationDefaults.from_hf_dict(generation_data, fallback_eos=_eos_ids(config, tokenizer))
    network = _empty_network(config, quant, group_size)
    network = load_weights(network, safetensors_weights.read_tensors(directory), str(directory), dtype, device)
    return Model(network, tokenizer, defaults, str(directory))


def load(
    source: str | Path,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    quant: str | None = None,
    quant_group_size: int = 32,
) -> Model:
    """Load a model from a `.gguf` file, an HF checkpoint directory, or a known name.

    Names: a small local test model (`qwen2.5-coder:0.5b`, fetched and verified on first use), or a preset
    (`qwq-32b-preview`) with `device="meta"`, which builds the architecture without weights for planning.
    dtype defaults to float32 on CPU and bfloat16 on CUDA. quant "int8" (per output channel) or "int4"
    (groups of `quant_group_size` inputs) stores every Linear weight, the LM head included, quantized
    (CPU only: it runs on PyTorch's packed CPU kernels).
    """
    resolved_device = _resolve_device(device)
    resolved_dtype = _resolve_dtype(dtype, resolved_device)
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
        return Model(network, None, preset.generation, name)
    if name in LOCAL_MODELS:
        source = fetch(name)
    path = Path(source).expanduser()
    if resolved_device.type == "meta":
        raise InvalidRequestError("device='meta' builds presets only; real checkpoints load onto cpu or cuda")
    if path.is_dir():
        logger.info("loading HF checkpoint %s", path)
        return _load_hf_dir(path, resolved_dtype, resolved_device, quant, quant_group_size)
    if path.is_file():
        logger.info("loading GGUF %s", path)
        return _load_gguf(path, resolved_dtype, resolved_device, quant, quant_group_size)
    raise ModelLoadError(
        f"{path}: no such file or directory (expected a .gguf file, an HF checkpoint directory, "
        f"or one of {sorted([*LOCAL_MODELS, *PRESETS])})"
    )
