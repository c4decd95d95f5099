"""Quantized Linear layers against the dequantized weight computed here by hand, on both ways of running them:
qwq's own kernels (decode-sized inputs) with the dense path for prompt-sized ones, and PyTorch's packed kernels."""

from __future__ import annotations

import pytest
import torch
from gguf import GGMLQuantizationType as QType

import qwq
from qwq.quant.linear import KERNELS_ENV, Int4Linear, Int8Linear
from qwq.quant.swap import quantize_linears

from tiny_checkpoints import write_gguf


@pytest.fixture(autouse=True, params=["native", "torch"])
def backend(request, monkeypatch):
    monkeypatch.setenv(KERNELS_ENV, request.param)
    return request.param


def _relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got - expected).abs().max() / expected.abs().max()).item()


@pytest.mark.parametrize(("out_features", "in_features"), [(128, 896), (4864, 896), (896, 4864)])
@pytest.mark.parametrize("rows", [3, 40])  # a decode step; a prompt (the native path's dense GEMM)
def test_int8_matches_per_channel_dequantization(out_features, in_features, rows, backend):
    torch.manual_seed(0)
    weight, x = torch.randn(out_features, in_features) * 0.05, torch.randn(rows, in_features)
    layer = Int8Linear(in_features, out_features, bias=False)
    assert layer.native == (backend == "native")
    layer.set_weight(weight)
    scales = weight.abs().amax(1) / 127
    dequantized = torch.round(weight / scales[:, None]).clamp(-127, 127) * scales[:, None]
    assert _relative_error(layer(x), x @ dequantized.T) < 0.01  # bfloat16 activations and scales
    assert _relative_error(layer(x), x @ weight.T) < 0.02


@pytest.mark.parametrize("group_size", [32, 64, 128])
@pytest.mark.parametrize("rows", [5, 40])
def test_int4_matches_group_dequantization(group_size, rows):
    torch.manual_seed(1)
    out_features, in_features = 256, 896
    weight, x = torch.randn(out_features, in_features) * 0.05, torch.randn(rows, in_features)
    layer = Int4Linear(in_features, out_features, bias=False, group_size=group_size)
    layer.set_weight(weight)
    grouped = weight.reshape(out_features, -1, group_size)
    low, high = grouped.amin(-1, keepdim=True), grouped.amax(-1, keepdim=True)
    step = (high - low) / 15
    dequantized = (torch.round((grouped - low) / step).clamp(0, 15) * step + low).reshape(out_features, in_features)
    assert _relative_error(layer(x), x @ dequantized.T) < 0.01
    assert _relative_error(layer(x), x @ weight.T) < 0.15


def test_bias_and_batch_shapes_are_kept():
    layer = Int8Linear(64, 32, bias=True)
    layer.set_weight(torch.randn(32, 64))
    layer.bias.data = torch.randn(32)
    x = torch.randn(2, 7, 64)
    out = layer(x)
    assert out.shape == (2, 7, 32) and out.dtype == x.dtype
    expected = x @ layer.dequantized().T + layer.bias
    assert _relative_error(out, expected) < 0.01


def test_bad_quantization_choices_are_refused(tmp_path):
    with pytest.raises(qwq.InvalidRequestError, match="group size"):
        Int4Linear(96, 32, bias=False, group_size=48)
    with pytest.raises(qwq.InvalidRequestError, match="divisible by 16"):
        Int4Linear(64, 24, bias=False, group_size=32)
    with pytest.raises(qwq.InvalidRequestError, match="group size must be one of"):
        quantize_linears(torch.nn.Sequential(torch.nn.Linear(64, 64)), "int4", group_size=48)
    with pytest.raises(qwq.InvalidRequestError, match="quant 'int3'"):
        quantize_linears(torch.nn.Sequential(torch.nn.Linear(4, 4)), "int3")
    path = write_gguf(tmp_path / "tiny.gguf", QType.F16)
    # With a GPU the quantized kernels' device is refused; without one, the device itself is.
    with pytest.raises(qwq.InvalidRequestError, match="quant='int8' runs on CPU kernels|sees no CUDA GPU"):
        qwq.load(path, device="cuda", quant="int8")


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_tied_head_is_quantized_from_the_embedding(tmp_path, mode):
    path = write_gguf(tmp_path / "tied.gguf", QType.F16, tied=True)
    dense, quantized = qwq.load(path), qwq.load(path, quant=mode)
    # The tiny vocabulary (263) is no multiple of 16, so int4 stores the head as int8; the rest stays int4.
    assert isinstance(quantized.network.lm_head, Int8Linear)
    expected_type = Int8Linear if mode == "int8" else Int4Linear
    assert isinstance(quantized.network.model.layers[0].mlp.gate_up_proj, expected_type)  # gate and up, fused
    embedding = dense.network.model.embed_tokens.weight
    assert _relative_error(quantized.network.lm_head.dequantized(), embedding) < 0.01


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_weight_given_in_blocks_of_rows_quantizes_to_the_same_bytes(kind):
    """Loading hands quantized layers their weight as blocks of rows (no whole float copy): same result."""
    torch.manual_seed(3)
    weight = torch.randn(2064, 256)

    def layer():
        return Int8Linear(256, 2064, bias=False) if kind == "int8" else Int4Linear(256, 2064, bias=False, group_size=32)

    whole, in_blocks = layer(), layer()
    whole.set_weight(weight)
    in_blocks.set_weight(iter(weight.split(512)))
    for name, buffer in whole.named_buffers():
        assert torch.equal(buffer, getattr(in_blocks, name)), name
    with pytest.raises(qwq.InvalidRequestError, match="2000 rows, the layer 2064"):
        layer().set_weight(iter(weight[:2000].split(400)))


def test_gguf_row_blocks_read_what_the_whole_tensor_holds(tmp_path):
    from qwq.weights.gguf import GGUFFile, RowBlocks

    gguf = GGUFFile(write_gguf(tmp_path / "q8.gguf", QType.Q8_0))
    name = "model.layers.0.mlp.down_proj.weight"
    whole = dict(gguf.tensors())[name]
    blocks = dict(gguf.tensors(row_blocks={name}))[name]
    assert isinstance(blocks, RowBlocks) and blocks.shape == tuple(whole.shape)
    assert torch.equal(torch.cat(list(RowBlocks(blocks.shape, blocks.read, rows_per_block=100))), whole)
