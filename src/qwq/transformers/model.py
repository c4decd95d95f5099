"""`AutoModelForCausalLM` and the model it returns: `qwq.load` behind transformers' `from_pretrained`, and
transformers' `generate` keywords translated once into qwq's request (`Model.params`), run on qwq's engine.

Rows of a batch run together (`Model.complete_batch`); their left padding is stripped by the attention mask
first, and the result is laid out as transformers lays it: each input row, then its new ids, then padding.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from qwq.api import Model, load, resolve_device, resolve_dtype
from qwq.config import ModelConfig
from qwq.engine.output import Completion
from qwq.engine.request import GREEDY_BELOW, Request
from qwq.errors import GenerationError, InvalidRequestError
from qwq.transformers.sources import checkpoint_path, pad_token
from qwq.transformers.tokenizer import token_list

# qwq.load's own options, passed through from `from_pretrained` (`quantization` becomes its `quant`)
_LOAD_OPTIONS = ("quant_group_size", "context_length", "default_context_length", "check_memory", "progress")
# accepted for transformers code's sake; they change nothing here (no checkpoint code is run, qwq always builds
# the model empty before reading weights, and its attention is its own)
_NO_OP_LOAD = ("trust_remote_code", "low_cpu_mem_usage", "attn_implementation")
# transformers' generate keywords qwq takes only at the value that asks for nothing it lacks
_ONLY = {
    "num_beams": 1,
    "num_return_sequences": 1,
    "use_cache": True,
    "output_scores": False,
    "output_logits": False,
    "output_attentions": False,
    "output_hidden_states": False,
    "return_dict_in_generate": False,
}


def _dtype(torch_dtype: Any, dtype: Any) -> Any:
    """transformers 4's `torch_dtype` or 5's `dtype`; "auto" (and None) take qwq's default for the device."""
    if torch_dtype is not None and dtype is not None:
        raise InvalidRequestError("pass torch_dtype or dtype, not both", field="torch_dtype")
    chosen = dtype if dtype is not None else torch_dtype
    return None if isinstance(chosen, str) and chosen == "auto" else chosen


def _device(device_map: Any, quantized: bool) -> torch.device | None:
    """The one device a `device_map` names; "auto" (and None) take qwq's default, the CPU for a quantized model
    (qwq's int8/int4 kernels are CPU ones)."""
    if device_map is None or device_map == "auto":
        return torch.device("cpu") if quantized else None
    if isinstance(device_map, Mapping) and len(set(device_map.values())) == 1:
        device_map = next(iter(device_map.values()))  # {"": 0}: the whole model on one device
    if isinstance(device_map, int) and not isinstance(device_map, bool):
        device_map = f"cuda:{device_map}"
    try:
        return torch.device(device_map)
    except (RuntimeError, TypeError):
        raise InvalidRequestError(
            f"device_map={device_map!r} is not supported: qwq keeps a model on one device; "
            "give 'auto', a device ('cpu', 'cuda:0') or a device index",
            field="device_map",
        ) from None


def _inputs(inputs: Any, input_ids: Any, attention_mask: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The prompt ids as (batch, length) and the mask of the same shape, however transformers code passes them."""
    if isinstance(inputs, Mapping):  # a tokenizer's whole output
        inputs, attention_mask = inputs["input_ids"], inputs.get("attention_mask", attention_mask)
    if inputs is not None and input_ids is not None:
        raise InvalidRequestError("pass the prompt as inputs or as input_ids, not both", field="input_ids")
    given = inputs if inputs is not None else input_ids
    if given is None:
        raise InvalidRequestError("generate() needs input_ids", field="input_ids")
    ids = torch.as_tensor(given)
    ids = ids[None] if ids.dim() == 1 else ids
    if ids.dim() != 2 or not len(ids):
        raise InvalidRequestError(
            f"input_ids must be (batch, length) with at least one row, got shape {tuple(ids.shape)}", field="input_ids"
        )
    if attention_mask is None:
        return ids, None
    mask = torch.as_tensor(attention_mask, device=ids.device)
    mask = mask[None] if mask.dim() == 1 else mask
    if mask.shape != ids.shape:
        raise InvalidRequestError(
            f"attention_mask has shape {tuple(mask.shape)} but input_ids {tuple(ids.shape)}", field="attention_mask"
        )
    return ids, mask


def _new_ids(completion: Completion) -> list[int]:
    if completion.finish_reason == "error":
        raise GenerationError(completion.error or "generation failed")
    return completion.token_ids


class CompatModel:
    """A loaded `qwq.Model` as transformers' causal LM is used: `.device`, `.dtype`, `.config` (qwq's
    ModelConfig, HF's keys) and `.generate`; `.qwq_model` is the Model itself."""

    def __init__(self, model: Model) -> None:
        self.qwq_model = model
        name = pad_token(model.tokenizer, Path(model.source)) if model.tokenizer is not None else None
        self.pad_token_id = model.tokenizer.token_id(name) if name else None

    @property
    def device(self) -> torch.device:
        return self.qwq_model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.qwq_model.dtype

    @property
    def config(self) -> ModelConfig:
        return self.qwq_model.config

    def generate(
        self,
        inputs: Any = None,
        *,
        input_ids: Any = None,
        attention_mask: Any = None,
        max_new_tokens: int | None = None,
        max_length: int | None = None,
        do_sample: bool | None = None,
        eos_token_id: int | Sequence[int] | None = None,
        pad_token_id: int | None = None,
        streamer: Any = None,
        **options: Any,
    ) -> torch.Tensor:
        """Each row's prompt and new ids, as transformers returns them. `do_sample=False` is greedy; with no
        sampling keyword the checkpoint's defaults apply. `temperature`, `top_p`, `top_k`, `min_p`,
        `repetition_penalty`, `seed`, `stop` and qwq's reasoning keywords (`Model.params`) pass through. With no
        `max_new_tokens` (or `max_length`) a reply runs to its stop token or the end of the context."""
        for name, allowed in _ONLY.items():
            if name in options and options.pop(name) != allowed:
                raise InvalidRequestError(f"generate() supports only {name}={allowed!r} on qwq", field=name)
        ids, mask = _inputs(inputs, input_ids, attention_mask)
        if streamer is not None and len(ids) != 1:
            raise InvalidRequestError(f"a streamer follows one row; this batch has {len(ids)}", field="streamer")
        if max_new_tokens is None and max_length is not None:
            max_new_tokens = max_length - ids.shape[1]  # transformers' max_length counts the (padded) prompt
        if max_new_tokens is not None:
            options["max_new_tokens"] = max_new_tokens
        greedy_checkpoint = self.qwq_model.generation_defaults.temperature < GREEDY_BELOW
        if do_sample is False:
            options["temperature"] = 0.0
        elif do_sample and options.get("temperature") is None and greedy_checkpoint:
            options["temperature"] = 1.0  # sampling asked of a greedy checkpoint: transformers' default temperature
        if eos_token_id is not None:
            options["stop_token_ids"] = token_list(eos_token_id)
        params = self.qwq_model.params(**options)
        rows = [row[keep.bool()] for row, keep in zip(ids, mask, strict=True)] if mask is not None else list(ids)
        requests = [self.qwq_model.request(row.tolist(), params) for row in rows]
        if len(requests) == 1:
            new = [self._complete(requests[0], streamer, ids)]
        else:
            finished = dict(self.qwq_model.complete_batch(requests))
            new = [_new_ids(finished[i]) for i in range(len(requests))]
        pads = (pad_token_id, self.pad_token_id, *requests[0].params.stop_token_ids)
        fill = next((p for p in pads if p is not None), 0)
        outputs = [row.tolist() + extra for row, extra in zip(ids, new, strict=True)]
        width = max(map(len, outputs))
        return torch.tensor([row + [fill] * (width - len(row)) for row in outputs], dtype=torch.long, device=ids.device)

    def _complete(self, request: Request, streamer: Any, prompt: torch.Tensor) -> list[int]:
        """One row on the Model's own engine, its tokens fed to `streamer` as they come. A reasoning control's
        rollback cannot be taken back from a streamer: it gets the replacement tokens after what it already has."""
        completion = self.qwq_model.complete(request)
        if streamer is None:
            for _ in completion.pieces():
                pass
            return _new_ids(completion)
        streamer.put(prompt.cpu())
        sent: list[int] = []
        rollbacks = 0
        try:
            for _ in completion.pieces():
                ids = completion.token_ids
                if completion.rolled_back == rollbacks:
                    keep = len(sent)
                else:
                    keep, rollbacks = len(os.path.commonprefix([sent, ids])), completion.rolled_back
                if len(ids) > keep:
                    streamer.put(torch.tensor(ids[keep:]))
                sent = list(ids)
        finally:
            streamer.end()
        return _new_ids(completion)


class AutoModelForCausalLM:
    """transformers' entry point: `AutoModelForCausalLM.from_pretrained(name_or_path, torch_dtype=, device_map=,
    gguf_file=, quantization=, context_length=, ...)`."""

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | Path,
        *,
        torch_dtype: Any = None,
        dtype: Any = None,
        device_map: Any = None,
        gguf_file: str | None = None,
        quantization: str | None = None,
        **options: Any,
    ) -> CompatModel:
        """A model name, .gguf file or checkpoint directory (see `qwq.transformers.sources`) loaded by `qwq.load`;
        `quantization="int8"|"int4"|"gguf"` is its `quant`, and its other options pass through by name."""
        for key in options:
            if key not in _LOAD_OPTIONS + _NO_OP_LOAD:
                raise InvalidRequestError(
                    f"AutoModelForCausalLM.from_pretrained() keyword {key!r} is not supported by qwq.transformers",
                    field=key,
                )
        chosen_dtype = _dtype(torch_dtype, dtype)
        device = _device(device_map, quantization is not None)
        if chosen_dtype is None and quantization is None:
            # transformers dequantizes a GGUF, so code written for it gets those weights here too (quantization=
            # "gguf" keeps a quantized file's own bits, qwq.load's default for one)
            chosen_dtype = resolve_dtype(None, resolve_device(device))
        path = checkpoint_path(pretrained_model_name_or_path, gguf_file)
        load_options = {key: value for key, value in options.items() if key in _LOAD_OPTIONS}
        return CompatModel(load(path, chosen_dtype, device, quantization, **load_options))
