"""Bad checkpoints fail with a qwq error whose message names the file and the problem."""

from __future__ import annotations

import json
import shutil

import pytest
from gguf import GGMLQuantizationType as QType

import qwq

from tiny_checkpoints import write_gguf, write_hf_dir


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    return write_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", QType.Q8_0)


@pytest.fixture(scope="module")
def tiny_hf_dir(tmp_path_factory, tiny_gguf):
    return write_hf_dir(tmp_path_factory.mktemp("hf") / "model", tiny_gguf)


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.gguf"
    with pytest.raises(qwq.ModelLoadError, match=r"nope\.gguf: no such file"):
        qwq.load(missing)


def test_truncated_gguf(tmp_path, tiny_gguf):
    data = tiny_gguf.read_bytes()
    for keep in (len(data) - 1000, len(data) // 2, 100):
        broken = tmp_path / f"cut-{keep}.gguf"
        broken.write_bytes(data[:keep])
        with pytest.raises(qwq.ModelLoadError, match=rf"cut-{keep}\.gguf: .*truncated"):
            qwq.load(broken)


def test_corrupt_gguf(tmp_path, tiny_gguf):
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"this is not a gguf file at all" * 100)
    with pytest.raises(qwq.ModelLoadError, match=r"garbage\.gguf: not a GGUF file"):
        qwq.load(garbage)
    data = bytearray(tiny_gguf.read_bytes())
    data[8:24] = b"\xff" * 16  # tensor and metadata counts
    scrambled = tmp_path / "scrambled.gguf"
    scrambled.write_bytes(bytes(data))
    with pytest.raises(qwq.ModelLoadError, match=r"scrambled\.gguf: corrupt: header claims"):
        qwq.load(scrambled)


def test_non_qwen2_gguf(tmp_path):
    path = write_gguf(tmp_path / "llama.gguf", QType.F16, architecture="llama")
    with pytest.raises(qwq.UnsupportedModelError, match=r"llama\.gguf: GGUF architecture 'llama' is not supported"):
        qwq.load(path)


def test_non_qwen2_hf_config(tmp_path, tiny_hf_dir):
    directory = shutil.copytree(tiny_hf_dir, tmp_path / "model")
    config = json.loads((directory / "config.json").read_text())
    config.update(model_type="llama", architectures=["LlamaForCausalLM"])
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(qwq.UnsupportedModelError, match=r"config\.json: model_type 'llama'"):
        qwq.load(directory)


def test_config_shapes_do_not_match_tensors(tmp_path, tiny_hf_dir):
    directory = shutil.copytree(tiny_hf_dir, tmp_path / "model")
    config = json.loads((directory / "config.json").read_text())
    config["intermediate_size"] = 640
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(qwq.ModelLoadError, match=r"model: tensor 'model\.layers\.0\.mlp\.\w+_proj\.weight' has shape"):
        qwq.load(directory)


def test_missing_and_corrupt_safetensors(tmp_path, tiny_hf_dir):
    directory = shutil.copytree(tiny_hf_dir, tmp_path / "model")
    weights = directory / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(qwq.ModelLoadError, match=r"model\.safetensors: not a readable safetensors file"):
        qwq.load(directory)
    weights.unlink()
    with pytest.raises(qwq.ModelLoadError, match=r"no \*\.safetensors weights found"):
        qwq.load(directory)


def test_invalid_config_json(tmp_path, tiny_hf_dir):
    directory = shutil.copytree(tiny_hf_dir, tmp_path / "model")
    (directory / "config.json").write_text("{not json")
    with pytest.raises(qwq.ModelLoadError, match=r"config\.json: not valid JSON"):
        qwq.load(directory)


def test_preset_names_and_meta_device():
    with pytest.raises(qwq.ModelLoadError, match="unknown model 'no-such-model:7b'"):
        qwq.load("no-such-model:7b")
    with pytest.raises(qwq.ModelLoadError, match="no such file or directory"):
        qwq.load("/no/such/model.gguf")
    with pytest.raises(qwq.InvalidRequestError, match="dtype 'int3'"):
        qwq.load("qwq-32b-preview", dtype="int3", device="meta")
    meta = qwq.load("qwq-32b-preview", device="meta")
    with pytest.raises(qwq.InvalidRequestError, match="meta device"):
        meta.logits([1, 2, 3])


def test_random_header_corruption_never_escapes_as_a_crash(tmp_path, tiny_gguf):
    """Flip bytes anywhere in the header: loading either works or raises a qwq error, nothing else."""
    import random

    data = tiny_gguf.read_bytes()
    header_end = data.index(b"<|im_start|>assistant") + 2000  # past the metadata, into the tensor directory
    rng = random.Random(0)
    outcomes = set()
    for trial in range(150):
        broken = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            broken[rng.randrange(4, header_end)] = rng.randrange(256)
        path = tmp_path / f"flip-{trial}.gguf"
        path.write_bytes(bytes(broken))
        try:
            qwq.load(path)
            outcomes.add("loaded")
        except qwq.QwqError as exc:
            assert "flip-" in str(exc)
            outcomes.add("refused")
        path.unlink()
    assert "refused" in outcomes


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"heads": 0}, r"'num_attention_heads' must be a positive integer, got 0"),
        ({"rms_norm_eps": float("inf")}, r"rms_norm_eps \(inf\) .* must be positive and finite"),
    ],
    ids=["zero-heads", "infinite-eps"],
)
def test_impossible_metadata_is_named_not_a_crash(tmp_path, metadata, message):
    """A GGUF whose metadata claims 0 attention heads (a ZeroDivisionError before) or an infinite epsilon
    is refused by name, for `qwq show` (meta device) as for loading the weights."""
    path = write_gguf(tmp_path / "lying.gguf", **metadata)
    expected = rf"lying\.gguf: metadata does not describe a valid model: .*{message}"
    for device in ("meta", "cpu"):
        with pytest.raises(qwq.ModelLoadError, match=expected):
            qwq.load(path, device=device)
