"""Two real models in one `qwq serve`: the 0.5B by its store name and the same file given at start under a
second name. Requested alternately through the official `openai` and `ollama` clients, both answer (the
same greedy reply: the same weights); `keep_alive: 0` unloads one and the server's resident memory drops by
about its size; `qwq ps` lists the other and `qwq stop` unloads it too."""

from __future__ import annotations

import time

import httpx
import ollama
import openai
import psutil
import pytest

from cli_process import run_qwq, server_process

MODEL = "qwen2.5-coder:0.5b"
COPY = "coder-copy"
QUESTION = [{"role": "user", "content": "What is 7 times 6? Reply with only the number."}]


@pytest.fixture(scope="module")
def server(gguf_path, tmp_path_factory):
    copy = tmp_path_factory.mktemp("second-name") / f"{COPY}.gguf"
    copy.symlink_to(gguf_path)
    arguments = ("--max-loaded", "2", "--keep-alive", "-1", "--ctx", "512", "--max-batch", "2")
    with server_process(MODEL, str(copy), *arguments, home=gguf_path.parent.parent) as running:
        yield running


def _resident(url: str) -> dict[str, dict]:
    return {model["name"]: model for model in httpx.get(f"{url}/api/ps", timeout=30).json()["models"]}


def _rss(server) -> int:
    return psutil.Process(server.process.pid).memory_info().rss


def _freed_after_unloading(server, name: str, before: int, size: int) -> int:
    """The resident memory handed back once `name` is gone from /api/ps (its freeing runs on for a moment
    after the unload of a request's keep_alive 0 begins), polled until it reaches 60% of the model's size."""
    deadline = time.monotonic() + 30
    while name in _resident(server.url) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert name not in _resident(server.url)
    while before - _rss(server) < 0.6 * size and time.monotonic() < deadline:
        time.sleep(0.2)
    return before - _rss(server)


def test_two_names_answer_alternately_through_both_clients(server):
    chat = openai.OpenAI(base_url=f"{server.url}/v1", api_key="-", max_retries=0, timeout=300)
    local = ollama.Client(server.url, timeout=300)
    replies = []
    for first, second in ((MODEL, COPY), (COPY, MODEL)):
        replies.append(chat.chat.completions.create(model=first, messages=QUESTION, temperature=0).choices[0])
        replies.append(local.chat(model=second, messages=QUESTION, options={"temperature": 0}).message)
    texts = [getattr(reply, "message", reply).content.strip() for reply in replies]
    assert texts == ["42"] * 4
    assert set(_resident(server.url)) == {MODEL, COPY}  # --max-loaded 2: both stayed


def test_keep_alive_zero_unloads_and_memory_drops(server):
    size = _resident(server.url)[COPY]["size"]
    assert size > 0.45e9  # the file's own bits (0.49 GB: the default for a quantized GGUF) and the KV cache
    before = _rss(server)
    answer = ollama.Client(server.url).generate(
        model=COPY, prompt="What is 2+2? Reply with only the number.", keep_alive=0, options={"temperature": 0}
    )
    assert answer.response.strip() == "4"
    assert _freed_after_unloading(server, COPY, before, size) > 0.6 * size
    assert list(_resident(server.url)) == [MODEL]


def test_qwq_ps_lists_and_qwq_stop_unloads(server):
    listed = run_qwq("ps", "--host", server.url)
    assert listed.returncode == 0, listed.stderr
    (row,) = listed.stdout.strip().splitlines()[1:]
    assert row.split()[0] == MODEL and "100% CPU" in row and row.endswith("Forever")
    before, size = _rss(server), _resident(server.url)[MODEL]["size"]
    assert run_qwq("stop", MODEL, "--host", server.url).returncode == 0
    assert before - _rss(server) > 0.6 * size  # `qwq stop` returns once the memory is handed back
    assert run_qwq("ps", "--host", server.url).stdout.strip().splitlines()[1:] == []
