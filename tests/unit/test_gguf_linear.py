"""A GGUF kept at its own bits (qwq.quant.gguf_linear): its layers against float layers holding gguf's own
dequantization of the same blocks, its loading (no float copy, the file's sizes planned), fusing, the one-call
decode step over parts of different types, and the embedding table at its bits."""

from __future__ import annotations

import platform

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as QType
from gguf.quants import dequantize

import qwq
from qwq.memory import GIB, estimate
from qwq.presets import PRESETS
from qwq.quant import native
from qwq.quant.gguf_linear import (
    GGUFEmbedding,
    GGUFLinear,
    concatenate,
    keep_file_bits,
    plane_widths,
    stacked_matrix,
    storable,
)
from qwq.weights.gguf import GGUFFile, RawBlocks
from qwq.weights.loader import build_empty

from tiny_checkpoints import gguf_blocks, write_gguf

pytestmark = pytest.mark.skipif(platform.machine() != "x86_64", reason="qwq's kernels are built for x86 here")

TYPES = ["Q8_0", "Q5_0", "Q4_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K", "Q3_K", "Q2_K"]


def _layer(type_name: str, rows: int, k: int, seed: int = 0, bias: bool = True) -> tuple[GGUFLinear, torch.Tensor]:
    """A GGUFLinear of random blocks, and the float weight gguf dequantizes them to."""
    raw = gguf_blocks(type_name, rows, k, seed)
    layer = GGUFLinear(k, rows, bias, QType[type_name])
    layer.set_weight(RawBlocks((rows, k), QType[type_name], lambda a, b: torch.from_numpy(raw[a:b]), rows_per_block=7))
    if bias:
        layer.bias = torch.nn.Parameter(torch.randn(rows) * 0.1, requires_grad=False)
    return layer, torch.from_numpy(dequantize(raw, QType[type_name]).astype(np.float32))


def test_plane_widths_are_the_kernels():
    kernels = native.kernels()
    for qtype in (QType[name] for name in TYPES + ["Q4_1"]):
        for k in (k for k in (256, 896, 4864) if storable(qtype, k)):
            assert plane_widths(qtype, k) == tuple(kernels.gguf_plane_widths(int(qtype), k)), (qtype.name, k)


@pytest.mark.parametrize("type_name", TYPES)
def test_layer_is_the_float_layer_of_the_file_weights(type_name):
    layer, weight = _layer(type_name, 72, 512)
    torch.manual_seed(1)
    with torch.inference_mode():
        decode, prompt = torch.randn(3, 512), torch.randn(40, 512)  # qwq's kernels, the dense GEMM
        for x, tolerance in ((decode, 0.01), (prompt, 0.01)):
            expected = x.double() @ weight.double().t() + layer.bias.double()
            got = layer(x).double()
            assert ((got - expected).norm() / expected.norm()).item() < tolerance
        assert torch.equal(layer.dequantized(8, 24), weight[8:24])


def test_fused_layers_compute_what_the_parts_compute():
    parts = [_layer("Q4_K", n, 256, seed=n)[0] for n in (64, 16, 16)]
    fused = concatenate(parts)
    x = torch.randn(2, 256)
    with torch.inference_mode():
        assert torch.equal(fused(x), torch.cat([part(x) for part in parts], dim=1))
        mixed = [_layer("Q5_0", 64, 256)[0], _layer("Q8_0", 16, 256)[0], _layer("Q6_K", 16, 256)[0]]
        stacked = stacked_matrix(mixed, native.kernels())
        assert torch.equal(stacked(x), torch.cat([part(x) for part in mixed], dim=1))


def test_a_model_at_its_bits_against_its_float_path(tmp_path):
    mix = {"attn_v.weight": QType.Q8_0, "ffn_down.weight": QType.Q6_K}  # as llama.cpp's Q5_0 mixes store them
    path = write_gguf(tmp_path / "mixed.gguf", QType.Q5_0, types=mix)
    at_bits, as_float = qwq.load(path), qwq.load(path, dtype="float32")  # the default for a quantized GGUF
    assert at_bits.quantization == "gguf Q5_0/Q6_K/Q8_0" and as_float.quantization is None
    assert at_bits.network.cache_dtype() == torch.bfloat16  # as int8's and int4's
    assert "loaded as gguf Q5_0/Q6_K/Q8_0" in at_bits.storage_description()
    assert at_bits.num_parameters() == as_float.num_parameters()
    network = at_bits.network
    assert isinstance(network.model.embed_tokens, GGUFEmbedding) and isinstance(network.lm_head, GGUFLinear)
    assert hasattr(network.model.layers[0].mlp, "gate_up_proj")  # gate and up share Q5_0: fused
    assert hasattr(network.model.layers[0].self_attn, "v_proj")  # V is Q8_0: Q/K/V stay apart in Python...
    assert all(layer.native_step is not None for layer in network.model.layers)  # ... and run as parts in C++
    ids = list(range(3, 40))
    with torch.inference_mode():
        expected, got = as_float.logits(ids), at_bits.logits(ids)
    assert ((got - expected).norm() / expected.norm()).item() < 0.02  # prompt rows: bfloat16 or float32 GEMM
    assert (got.argmax(-1) == expected.argmax(-1)).float().mean() > 0.9


def test_the_one_call_step_decodes_like_the_python_layers(tmp_path):
    from test_step_kernels import _decode_logits

    path = write_gguf(tmp_path / "mixed.gguf", QType.Q4_K, types={"attn_v.weight": QType.Q6_K})
    model = qwq.load(path, quant="gguf")
    ids = torch.randint(0, model.config.vocab_size, (40,), generator=torch.Generator().manual_seed(0)).tolist()
    native_step, python = _decode_logits(model, ids, True), _decode_logits(model, ids, False)
    # the same kernels both ways, on inputs apart by float rounding (C++ and torch RMSNorm and attention), which the
    # int8 activations can turn into one quantization step here and there (as int4's in test_step_kernels)
    assert ((native_step - python).abs().max() / python.abs().max()).item() < 0.05
    assert (native_step.argmax(-1) == python.argmax(-1)).float().mean() > 0.9


def test_batched_rows_decode_as_rows_alone(tmp_path):
    model = qwq.load(write_gguf(tmp_path / "tiny.gguf", QType.Q5_0), quant="gguf")
    prompts = [[5, 9, 13], [40, 41, 42, 43], [7]]
    alone = [model.generate(p, max_new_tokens=8, temperature=0.0, ignore_eos=True) for p in prompts]
    requests = [model.request(p, qwq.GenerationParams(max_tokens=8, temperature=0.0, ignore_eos=True)) for p in prompts]
    batched = dict(model.complete_batch(requests))
    assert [batched[index].token_ids for index in range(len(prompts))] == alone


def test_tied_head_shares_the_table_and_loads_without_a_float_copy(tmp_path):
    path = write_gguf(tmp_path / "tied.gguf", QType.Q8_0, tied=True)
    model = qwq.load(path, quant="gguf")
    table, head = model.network.model.embed_tokens, model.network.lm_head
    assert all(a.data_ptr() == b.data_ptr() for a, b in zip(table.planes, head.planes, strict=True))
    gguf = GGUFFile(path)
    info = next(i for i in gguf.tensor_infos if i.name == "token_embd.weight")
    raw = np.fromfile(path, dtype=np.uint8, count=info.n_bytes, offset=info.offset).reshape(info.shape[0], -1)
    ids = torch.tensor([[3, 0], [info.shape[0] - 1, 3]])
    expected = torch.from_numpy(dequantize(raw, info.qtype).astype(np.float32))[ids]
    assert torch.equal(table(ids), expected)
    assert not any(p.dtype.is_floating_point and p.dim() == 2 for p in model.network.parameters())


def test_memory_plan_is_the_file_size(tmp_path):
    path = write_gguf(tmp_path / "q4k.gguf", QType.Q4_K)
    at_bits, as_float = qwq.load(path, device="meta", quant="gguf"), qwq.load(path, device="meta", dtype="float32")
    stored = sum(i.n_bytes for i in GGUFFile(path).tensor_infos)
    planned = estimate(at_bits.network, torch.float32, 64).weights
    assert stored <= planned < 1.1 * stored  # the file's bytes (the K scales unpacked: 2.8% more), no float copy
    assert estimate(as_float.network, torch.float32, 64).weights > 6 * stored


def q4_k_m_types(layers: int) -> dict[str, QType]:
    """The tensor types of a Q4_K_M file as llama.cpp chooses them: Q6_K for the LM head and for V and down in the
    first and last eighth of the layers and every third layer between, Q4_K for every other matrix."""
    more_bits = [i < layers // 8 or i >= 7 * layers // 8 or (i - layers // 8) % 3 == 2 for i in range(layers)]
    types = {"model.embed_tokens.weight": QType.Q4_K, "lm_head.weight": QType.Q6_K}
    for i, more in enumerate(more_bits):
        for name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj"):
            types[f"model.layers.{i}.{name}.weight"] = QType.Q4_K
        for name in ("self_attn.v_proj", "mlp.down_proj"):
            types[f"model.layers.{i}.{name}.weight"] = QType.Q6_K if more else QType.Q4_K
    return types


def test_qwq_32b_q4_k_m_plans_in_24_gib_at_its_bits():
    """`qwq run qwq:32b-preview-q4_k_m` plans its 19.9 GB file (8,192 positions, the CLI's context) in 24 GiB."""
    config = PRESETS["qwq-32b-preview"].config
    network = build_empty(config)
    network.kv_cache_dtype = torch.bfloat16  # a quantized model's default
    network = keep_file_bits(network, q4_k_m_types(config.num_hidden_layers))
    plan = estimate(network, torch.float32, 8192)
    assert 19.5e9 < plan.weights < 20.5e9, plan.describe()  # about the file's size
    assert plan.total < 24 * GIB, plan.describe()


def test_re_quantizing_a_quantized_file_says_so(tmp_path, caplog):
    path = write_gguf(tmp_path / "q8.gguf", QType.Q8_0)
    with caplog.at_level("WARNING", logger="qwq.api"):
        assert qwq.load(path, quant="int4").quantization == "int4"
    assert "rounds them a second time" in caplog.text
