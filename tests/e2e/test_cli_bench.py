"""`qwq bench` as a subprocess: JSON with consistent timings, a table by default, clear errors."""

from __future__ import annotations

import json

import pytest
from gguf import GGMLQuantizationType as QType

from cli_process import assert_one_line_error
from cli_process import run_qwq as _qwq
from tiny_checkpoints import write_gguf


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return write_gguf(tmp_path_factory.mktemp("bench") / "tiny.gguf", QType.Q8_0)


def test_json_result_is_consistent(tiny_model):
    result = _qwq(
        "bench",
        str(tiny_model),
        "--prompt-tokens",
        "24",
        "--new-tokens",
        "6",
        "--repeats",
        "3",
        "--json",
        "--threads",
        "1",
        "--quant",
        "int8",
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert (data["prompt_tokens"], data["new_tokens"], data["repeats"], data["threads"]) == (24, 6, 3, 1)
    ttft, prefill = data["time_to_first_token_s"], data["prefill_tokens_per_s"]
    assert ttft["low"] <= ttft["median"] <= ttft["high"]
    assert prefill["high"] == pytest.approx(24 / ttft["low"])
    assert data["decode_tokens_per_s"]["median"] > 0
    assert data["peak_rss_gib"] > 0


def test_table_output(tiny_model):
    result = _qwq("bench", str(tiny_model), "--prompt-tokens", "8", "--new-tokens", "2", "--repeats", "1")
    assert result.returncode == 0, result.stderr
    for label in ("time to first token", "prefill", "decode", "peak RSS"):
        assert label in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--repeats", "0"), "repeats must be at least 1"),
        (("--prompt-tokens", "100000"), "the prompt (100000 tokens) leaves no room in the context of 64 tokens"),
        (("--threads", "0"), "--threads must be at least 1"),
    ],
)
def test_bad_options_are_one_line_errors(tiny_model, args, message):
    assert_one_line_error(_qwq("bench", str(tiny_model), *args), message)
