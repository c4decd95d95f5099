"""Several models in one `qwq serve`, on tiny random checkpoints (each loads in a moment): loading on first
use, --max-loaded and the least recently used unloaded once its running request has finished, keep_alive
(durations, 0, forever) and the empty-prompt preload through the official `ollama` client, a load that fails
without harming the resident model, 404s that say what is served, /metrics read with prometheus_client's
own parser, and `qwq ps` / `qwq stop` as clients of the server."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime

import httpx
import ollama
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cli_process import assert_one_line_error, run_qwq, server_process
from tiny_checkpoints import write_gguf

MODELS = ("tiny-a", "tiny-b", "tiny-c")
QUICK = 30


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    home = tmp_path_factory.mktemp("models-home")
    for seed, name in enumerate(MODELS):
        write_gguf(home / f"{name}.gguf", context=512, seed=seed)
    (home / "broken.gguf").write_bytes(b"GGUF" + bytes(64))  # a header that promises what is not there
    return home


def _serve(home, *arguments: str):
    files = [str(home / f"{name}.gguf") for name in (*MODELS, "broken")]
    return server_process(*files, "--ctx", "512", *arguments, home=home)


@pytest.fixture(scope="module")
def url(home):
    with _serve(home, "--max-loaded", "1") as server:
        yield server.url


def _resident(url: str) -> list[str]:
    return [model["name"] for model in httpx.get(f"{url}/api/ps", timeout=QUICK).json()["models"]]


def _wait_resident(url: str, expected: list[str], seconds: float = 10) -> list[str]:
    deadline = time.monotonic() + seconds
    while (names := _resident(url)) != expected and time.monotonic() < deadline:
        time.sleep(0.1)
    return names


def _generate(url: str, model: str, **fields) -> httpx.Response:
    body = {"model": model, "prompt": "hi", "stream": False, "options": {"num_predict": 4}, **fields}
    return httpx.post(f"{url}/api/generate", json=body, timeout=QUICK)


def test_every_model_is_listed_and_loaded_on_first_use(url):
    listed = [model.id for model in openai.OpenAI(base_url=f"{url}/v1", api_key="-").models.list().data]
    assert listed == [*MODELS, "broken"]  # the models given at start, in their order (this store is empty)
    assert [model.model for model in ollama.Client(url).list().models] == list(MODELS)  # broken: no description
    assert _resident(url) == ["tiny-a"]  # the first is loaded at start
    assert _generate(url, "tiny-b").json()["done"] is True
    assert _resident(url) == ["tiny-b"]  # --max-loaded 1: the least recently used went
    chat = openai.OpenAI(base_url=f"{url}/v1", api_key="-").chat.completions.create(
        model="tiny-c", messages=[{"role": "user", "content": "hi"}], max_tokens=3
    )
    assert chat.usage.completion_tokens == 3 and _resident(url) == ["tiny-c"]


def test_a_running_request_finishes_before_its_model_makes_room(url):
    assert _generate(url, "tiny-a").status_code == 200
    body = {"model": "tiny-a", "prompt": "hi", "options": {"num_predict": 400, "temperature": 0}}
    lines, other = [], {}
    with httpx.stream("POST", f"{url}/api/generate", json=body, timeout=QUICK) as stream:
        reading = stream.iter_lines()
        lines.append(json.loads(next(reading)))
        assert httpx.get(f"{url}/health", timeout=QUICK).json()["running"] == 1  # still generating

        def ask_other() -> None:
            other["reply"] = _generate(url, "tiny-b").json()
            other["at"] = time.monotonic()

        asker = threading.Thread(target=ask_other)
        asker.start()
        lines.extend(json.loads(line) for line in reading)
        finished = time.monotonic()
    asker.join(timeout=QUICK)
    assert lines[-1]["done_reason"] == "length" and lines[-1]["eval_count"] == 400  # not cut for the other
    assert other["reply"]["done"] is True and other["at"] > finished
    assert other["reply"]["load_duration"] > 0  # it waited for its model's load
    assert _resident(url) == ["tiny-b"]


def test_keep_alive_durations_zero_and_forever(url):
    _generate(url, "tiny-a", keep_alive="3s")
    (entry,) = httpx.get(f"{url}/api/ps", timeout=QUICK).json()["models"]
    expires = datetime.fromisoformat(entry["expires_at"].replace("Z", "+00:00"))
    assert 0 < (expires - datetime.now(UTC)).total_seconds() <= 3
    assert _wait_resident(url, [], seconds=10) == []  # unloaded once idle for three seconds
    for forever in (-1, 1e300):  # negative, or past any date: kept for good
        _generate(url, "tiny-a", keep_alive=forever)
        assert httpx.get(f"{url}/api/ps", timeout=QUICK).json()["models"][0]["expires_at"].startswith("9999")
    answered = _generate(url, "tiny-a", keep_alive=0).json()  # answers, then unloads at once
    assert answered["done_reason"] == "length" and _wait_resident(url, [], seconds=3) == []
    refused = _generate(url, "tiny-a", keep_alive="soon")
    assert refused.status_code == 400 and "keep_alive" in refused.json()["error"]


def test_the_empty_prompt_loads_and_keep_alive_zero_unloads_as_in_ollama(url):
    client = ollama.Client(url)
    loaded = client.generate(model="tiny-c")
    assert (loaded.done, loaded.done_reason, loaded.response) == (True, "load", "")
    assert _resident(url) == ["tiny-c"]
    unloaded = client.generate(model="tiny-c", keep_alive=0)
    assert unloaded.done_reason == "unload" and _resident(url) == []
    assert client.chat(model="tiny-b", messages=[]).done_reason == "load"
    assert _resident(url) == ["tiny-b"]
    assert client.chat(model="tiny-b", keep_alive=0).done_reason == "unload" and _resident(url) == []


def test_unknown_and_unpulled_names_are_404_naming_what_is_served(url):
    missing = httpx.post(f"{url}/v1/chat/completions", json={"model": "gpt-4", "messages": [{"role": "user"}]})
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "model"
    assert "'tiny-a', 'tiny-b', 'tiny-c'" in missing.json()["error"]["message"]
    unpulled = _generate(url, "qwen2.5-coder:1.5b")
    assert unpulled.status_code == 404 and "is not pulled: POST /api/pull" in unpulled.json()["error"]
    with pytest.raises(ollama.ResponseError) as caught:
        ollama.Client(url).generate(model="llama3", keep_alive=0)
    assert caught.value.status_code == 404


def test_qwq_ps_lists_and_qwq_stop_unloads(url):
    _generate(url, "tiny-a", keep_alive=-1)
    listed = run_qwq("ps", "--host", url)
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.strip().splitlines()
    assert header.split() == ["NAME", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]
    assert [row.split()[0] for row in rows] == ["tiny-a"] and rows[0].endswith("Forever") and "512" in rows[0]
    stopped = run_qwq("stop", "tiny-a", QWQ_HOST=url.removeprefix("http://"))
    assert stopped.returncode == 0, stopped.stderr
    assert run_qwq("ps", "--host", url).stdout.strip().splitlines()[1:] == [] and _resident(url) == []
    assert_one_line_error(run_qwq("stop", "nope", "--host", url), "model 'nope' not found")
    assert_one_line_error(run_qwq("ps", "--host", "127.0.0.1:9"), "no qwq server answers at http://127.0.0.1:9")


def test_metrics_count_what_was_served(url):
    client = ollama.Client(url)
    before = _samples(url)
    replies = [client.generate(model=name, prompt="hi", options={"num_predict": 5}) for name in ("tiny-a", "tiny-b")]
    concurrent = []
    threads = [threading.Thread(target=lambda: concurrent.append(_generate(url, "tiny-c"))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=QUICK)
    after = _samples(url)

    def grew(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert grew("qwq_requests_total", route="/api/generate", status="200") == 4
    assert grew("qwq_generated_tokens_total", model="tiny-a") == replies[0].eval_count
    assert grew("qwq_prompt_tokens_total", model="tiny-b") == replies[1].prompt_eval_count
    assert grew("qwq_time_to_first_token_seconds_count", model="tiny-c") == 2
    assert grew("qwq_model_loads_total", model="tiny-c", outcome="loaded") == 1  # two requests, one load
    assert grew("qwq_request_duration_seconds_count", route="/api/generate") == 4
    assert after[("qwq_requests_running", (("model", "tiny-c"),))] == 0
    assert after[("qwq_requests_waiting", (("model", "tiny-c"),))] == 0
    assert after[("qwq_models_loaded", ())] == 1


def _samples(url: str) -> dict[tuple[str, tuple], float]:
    text = httpx.get(f"{url}/metrics", timeout=QUICK).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if "le" not in sample.labels
    }


def test_a_failed_load_is_named_and_harms_no_resident_model(home):
    with _serve(home, "--max-loaded", "2") as server:
        assert _resident(server.url) == ["tiny-b", "tiny-a"]  # both loaded at start, most recent first
        failed = httpx.post(
            f"{server.url}/v1/completions", json={"model": "broken", "prompt": "hi", "max_tokens": 2}, timeout=QUICK
        )
        assert failed.status_code == 503
        assert failed.json()["error"]["message"].startswith("model 'broken' could not be loaded: ")
        assert failed.json()["error"]["param"] == "model"
        assert _resident(server.url) == ["tiny-b", "tiny-a"]  # a bad load took no room
        assert _generate(server.url, "tiny-a").json()["done"] is True
        again = _generate(server.url, "broken")
        assert again.status_code == 503 and "broken.gguf" in again.json()["error"]
