"""A corpus of corrupt checkpoints (issue 17): truncations, targeted corruptions of the header and of the tensor
directory, zero and huge counts, NaN tensors, overlapping byte ranges, seeded random bit flips. Every case is
loaded in one child process under a time limit (so a hang fails the test instead of stalling it), and each
must end as a one-line qwq error that names the file and the problem — or, for a random flip that happens to
leave a valid file, load.
"""

from __future__ import annotations

import json
import random
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QType

from qwq.weights.gguf_container import read_header

from tiny_checkpoints import write_gguf

LOADER = """
import json, sys, traceback
import qwq
for path in sys.argv[1:]:
    try:
        qwq.load(path)
        outcome = {"path": path, "kind": "loaded"}
    except qwq.QwqError as exc:
        outcome = {"path": path, "kind": "refused", "message": str(exc)}
    except BaseException:
        outcome = {"path": path, "kind": "crash", "message": traceback.format_exc()}
    print(json.dumps(outcome), flush=True)
"""


def _u32_value_at(data: bytes, key: str) -> int:
    """Byte offset of the u32 value of metadata `key` (key string, then its u32 type code, then the value)."""
    position = data.index(key.encode() + struct.pack("<I", 4))  # type 4: UINT32
    return position + len(key) + 4


def _directory_entry(data: bytes, name: str) -> int:
    """Byte offset just past tensor `name`'s name in the tensor directory (its n_dims field)."""
    encoded = struct.pack("<Q", len(name)) + name.encode()
    return data.rindex(encoded) + len(encoded)


def _corpus(source: Path, out: Path) -> dict[str, tuple[bytes, str]]:
    """name -> (file bytes, a regex the error must match)."""
    data = source.read_bytes()
    _, infos = read_header(source)
    by_name = {info.name: info for info in infos}
    cases: dict[str, tuple[bytes, str]] = {}

    def patched(offset: int, value: bytes) -> bytes:
        return data[:offset] + value + data[offset + len(value) :]

    for keep in (0, 3, 7, 20, 200, 2000, len(data) // 2, len(data) - 1):
        cases[f"cut-{keep}"] = (data[:keep], r"truncated|not a GGUF file")
    cases["magic"] = (b"GGUX" + data[4:], "not a GGUF file")
    cases["version-99"] = (patched(4, struct.pack("<I", 99)), "version 99 is not supported")
    cases["tensor-count-huge"] = (patched(8, struct.pack("<Q", 2**60)), "corrupt: header claims")
    cases["kv-count-huge"] = (patched(16, struct.pack("<Q", 2**60)), "corrupt: header claims")
    cases["tensor-count-short"] = (
        patched(8, struct.pack("<Q", len(infos) - 1)),
        "missing tensors|truncated|corrupt|loaded-ok",
    )
    for key, value, message in (
        ("qwen2.attention.head_count", 0, "num_attention_heads' must be a positive integer, got 0"),
        ("qwen2.attention.head_count", 3, r"num_attention_heads \(3\) × head_dim|not a multiple"),
        ("qwen2.attention.head_count_kv", 0, "num_key_value_heads' must be a positive integer, got 0"),
        ("qwen2.attention.head_count_kv", 3, "not a multiple of num_key_value_heads"),
        ("qwen2.block_count", 0, "metadata says 0 layers"),
        ("qwen2.block_count", 2**31, "metadata says 2147483648 layers"),
        ("qwen2.context_length", 0, "max_position_embeddings' must be a positive integer, got 0"),
        ("qwen2.feed_forward_length", 0, "intermediate_size' must be a positive integer, got 0"),
        ("qwen2.embedding_length", 2**31, "embedding_length 2147483648 does not match"),
    ):
        cases[f"{key.split('.', 1)[1]}-{value}"] = (
            patched(_u32_value_at(data, key), struct.pack("<I", value)),
            message,
        )
    q = _directory_entry(data, "blk.0.attn_q.weight")
    cases["n-dims-9"] = (patched(q, struct.pack("<I", 9)), "claims 9 dimensions")
    cases["dim-zero"] = (patched(q + 4, struct.pack("<Q", 0)), "has shape")
    cases["dim-huge"] = (patched(q + 4, struct.pack("<Q", 2**40)), "truncated|has shape|overlaps")
    cases["type-999"] = (patched(q + 4 + 16, struct.pack("<I", 999)), "unknown type code 999")
    relative = by_name["blk.0.attn_q.weight"].offset - min(i.offset for i in infos)
    cases["offset-huge"] = (patched(q + 4 + 16 + 4, struct.pack("<Q", 2**50)), "truncated: tensor 'blk.0.attn_q")
    overlapping = by_name["blk.0.attn_k.weight"].offset - min(i.offset for i in infos)
    assert overlapping != relative
    cases["offset-overlaps"] = (patched(q + 4 + 16 + 4, struct.pack("<Q", overlapping)), "overlaps tensor")
    # a tensor retyped to a wider type: its bytes now run over the next tensor's (the probe's hang under serve)
    f16 = write_gguf(out / "source-f16.gguf", QType.F16, context=256).read_bytes()
    q16 = _directory_entry(f16, "blk.0.attn_q.weight") + 4 + 16
    cases["retyped-f16-to-f32"] = (f16[:q16] + struct.pack("<I", 0) + f16[q16 + 4 :], "overlaps tensor")
    for tensor in ("blk.0.attn_norm.weight", "output_norm.weight", "blk.1.attn_q.bias"):
        info = by_name[tensor]
        poisoned = patched(info.offset + 4 * 3, np.array([np.nan], dtype=np.float32).tobytes())
        cases[f"nan-{tensor}"] = (poisoned, rf"{tensor.replace('blk.', 'model.layers.').split('.weight')[0]}.*NaN|NaN")
    infinite = patched(by_name["output_norm.weight"].offset, np.array([np.inf], dtype=np.float32).tobytes())
    cases["inf-output_norm"] = (infinite, "NaN or infinite")
    eps = data.index(b"qwen2.attention.layer_norm_rms_epsilon") + len("qwen2.attention.layer_norm_rms_epsilon") + 4
    cases["eps-nan"] = (patched(eps, np.array([np.nan], dtype=np.float32).tobytes()), "rms_norm_eps")
    cases["eps-negative"] = (patched(eps, np.array([-1.0], dtype=np.float32).tobytes()), "rms_norm_eps")
    rng = random.Random(17)
    header_end = min(i.offset for i in infos)
    for trial in range(40):
        flipped = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            position = rng.randrange(4, header_end)
            flipped[position] ^= 1 << rng.randrange(8)
        cases[f"flip-{trial}"] = (bytes(flipped), "")  # any qwq error, or a file that still loads
    for name, (content, _) in cases.items():
        (out / f"{name}.gguf").write_bytes(content)
    return cases


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    directory = tmp_path_factory.mktemp("corrupt")
    source = write_gguf(directory / "source.gguf", context=256)
    cases = _corpus(source, directory)
    paths = [str(directory / f"{name}.gguf") for name in cases]
    result = subprocess.run(
        [sys.executable, "-c", LOADER, *paths], capture_output=True, text=True, timeout=240, check=False
    )
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == len(cases), result.stderr[-2000:]
    return cases, {Path(line["path"]).stem: line for line in lines}


def test_every_corrupt_checkpoint_is_a_one_line_error_naming_file_and_problem(outcomes):
    cases, seen = outcomes
    problems, refused = [], 0
    for name, (_, expected) in cases.items():
        outcome = seen[name]
        message = outcome.get("message", "")
        if outcome["kind"] == "crash":
            problems.append(f"{name}: crashed: {message}")
        elif outcome["kind"] == "loaded":
            if not (name.startswith("flip-") or "loaded-ok" in expected):
                problems.append(f"{name}: loaded without complaint")
        else:
            refused += 1
            if f"{name}.gguf" not in message or "\n" in message:
                problems.append(f"{name}: not one line naming the file: {message!r}")
            elif not re.search(expected, message):
                problems.append(f"{name}: {message!r} does not match {expected!r}")
    assert not problems, "\n".join(problems)
    assert len(cases) >= 70 and refused >= 50


def test_qwq_check_finds_a_nan_inside_a_matrix(tmp_path):
    """A NaN inside a large matrix loads (only norms and biases are scanned at load); `qwq check` finds it."""
    source = write_gguf(tmp_path / "clean.gguf", context=256)
    _, infos = read_header(source)
    info = next(i for i in infos if i.name == "blk.1.ffn_down.weight")
    data = bytearray(source.read_bytes())
    data[info.offset + 40 : info.offset + 44] = np.array([np.nan], dtype=np.float32).tobytes()
    poisoned = tmp_path / "poisoned.gguf"
    poisoned.write_bytes(bytes(data))
    for path, code, text in ((source, 0, "no NaN or infinite values"), (poisoned, 1, "1 tensors hold NaN")):
        result = subprocess.run(
            [sys.executable, "-m", "qwq.cli.main", "check", str(path)], capture_output=True, text=True, timeout=120
        )
        assert result.returncode == code, result.stderr
        assert text in result.stdout and "Traceback" not in result.stderr
    assert "'model.layers.1.mlp.down_proj.weight' holds 1 NaN" in result.stderr
