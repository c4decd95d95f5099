"""`qwq list / show / rm / pull` against a store in a temporary QWQ_HOME, offline pulls, the memory check,
and one-shot output routing (answer on stdout, reasoning on stderr)."""

from __future__ import annotations

import time

import pytest

from qwq.local_models import LOCAL_MODELS

from cli_process import assert_one_line_error
from cli_process import run_qwq as _qwq


@pytest.fixture
def store(tmp_path, gguf_path):
    """A store holding the 0.5B model (a link to the verified session copy)."""
    models = tmp_path / "models"
    models.mkdir()
    (models / LOCAL_MODELS["qwen2.5-coder:0.5b"].filename).symlink_to(gguf_path)
    return tmp_path


def test_list_show_rm(store):
    listed = _qwq("list", home=store)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.strip().splitlines()
    assert lines[0].split()[:3] == ["NAME", "SIZE", "MODIFIED"]
    assert [line.split()[0] for line in lines[1:]] == ["qwen2.5-coder:0.5b"]
    assert "0.49 GB" in lines[1]

    shown = _qwq("show", "qwen2.5-coder:0.5b", home=store)
    assert shown.returncode == 0, shown.stderr
    for expected in ("qwen2 (24 layers)", "630,167,424", "GGUF Q5_0", "32768", "896", "14 (key/value: 2)", "151645"):
        assert expected in shown.stdout
    template = _qwq("show", "qwen2.5-coder:0.5b", "--template", home=store)
    assert template.stdout.startswith("{%- if tools %}")

    removed = _qwq("rm", "qwen2.5-coder:0.5b", home=store)
    assert removed.returncode == 0, removed.stderr
    assert _qwq("list", home=store).stdout.strip().splitlines()[1:] == []
    assert_one_line_error(_qwq("rm", "qwen2.5-coder:0.5b", home=store), "is not pulled: nothing to remove")


def test_show_describes_qwq_before_it_is_pulled(tmp_path):
    shown = _qwq("show", "qwq", home=tmp_path)
    assert shown.returncode == 0, shown.stderr
    for expected in ("qwen2 (64 layers)", "32,763,876,352", "not pulled", "temperature     0.7", "top_k           20"):
        assert expected in shown.stdout


def test_pull_without_network_fails_fast_and_says_what_to_do(tmp_path):
    started = time.monotonic()
    result = _qwq("pull", "hf.co/Qwen/Qwen2.5-0.5B-Instruct", home=tmp_path, HF_ENDPOINT="http://127.0.0.1:9")
    assert_one_line_error(result, "cannot reach the Hugging Face Hub for Qwen/Qwen2.5-0.5B-Instruct")
    assert "qwq run /path/to/model.gguf" in result.stderr
    assert time.monotonic() - started < 60
    run = _qwq("run", "qwq", "hi", home=tmp_path, HF_ENDPOINT="http://127.0.0.1:9")  # run pulls, as ollama does
    assert_one_line_error(run, "cannot reach the Hugging Face Hub for Qwen/QwQ-32B-Preview")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("show", "nope:3b"), "unknown model 'nope:3b'"),
        (("pull", "hf.co/just-one-part"), "write Hub models as hf.co/OWNER/REPO"),
        (("rm", "nope:3b"), "unknown model 'nope:3b'"),
    ],
)
def test_bad_names_are_one_line_errors(tmp_path, args, message):
    assert_one_line_error(_qwq(*args, home=tmp_path), message)


def test_corrupt_file_is_aassert_one_line_error(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    assert_one_line_error(_qwq("run", str(bad), "hi"), str(bad))


def test_memory_check_refuses_before_loading_and_hints_at_int4(gguf_path):
    """Dequantized to float32 the 0.5B does not fit 2.5 GiB: refused before loading, with the hint; re-quantized
    to int4 it fits and answers."""
    refused = _qwq("run", str(gguf_path), "hi", "--dtype", "float32", QWQ_MAX_MEMORY_GIB="2.5")
    assert_one_line_error(refused, "only 2.5 GiB is available")
    assert "try --quant int4" in refused.stderr
    quantized = _qwq(
        "run",
        str(gguf_path),
        "What is 2+3? Reply with only the number.",
        "--quant",
        "int4",
        "--temperature",
        "0",
        QWQ_MAX_MEMORY_GIB="2.5",
    )
    assert quantized.returncode == 0, quantized.stderr
    assert "5" in quantized.stdout


def test_one_shot_routes_reasoning_to_stderr_and_reports_a_missing_answer(gguf_path):
    """Read as QwQ-Preview output, a plain reply has no **Final Answer**: it is all reasoning, so stdout stays
    empty and stderr says the model gave no final answer; --hide-reasoning drops the reasoning itself."""
    question = ["What is 7 times 6? Reply with only the number.", "--temperature", "0"]
    shown = _qwq("run", str(gguf_path), *question, "--reasoning-format", "qwq-preview")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == ""
    assert "42" in shown.stderr and "no final answer" in shown.stderr
    hidden = _qwq("run", str(gguf_path), *question, "--reasoning-format", "qwq-preview", "--hide-reasoning")
    assert "42" not in hidden.stderr and "no final answer" in hidden.stderr
    plain = _qwq("run", str(gguf_path), *question, "--verbose")
    assert plain.stdout.strip() == "42"
    assert "eval rate:" in plain.stderr and "prompt eval count:" in plain.stderr
