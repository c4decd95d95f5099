"""The evaluation runner with fake backends and a fake grader: resume, a run killed mid-way (Ctrl+C, a torn
last line), the configuration hash, no-answer replies counted apart; every benchmark loader on its file in
shared/data; GPQA's seeded shuffles; the endpoint backend's retries and reply parsing (a mock transport);
the Hub loaders' file choice and LiveCodeBench's compressed tests; the report's files."""

from __future__ import annotations

import base64
import json
import pickle
import re
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import date
from pathlib import Path

import httpx
import pytest

from qwq.errors import InvalidRequestError
from qwq.eval import report as report_module
from qwq.eval.backends import EndpointBackend, Job, Reply, endpoint_body, split_message
from qwq.eval.benchmarks import livecodebench
from qwq.eval.benchmarks.registry import BENCHMARKS, Dataset, load_dataset
from qwq.eval.benchmarks.spec import DataOptions
from qwq.eval.hub_data import hub_rows
from qwq.eval.jsonl import append_record, open_for_append, read_records
from qwq.eval.runner import SAMPLES_FILE, RunSettings, config_hash, latest_records, run_config, run_eval
from qwq.eval.types import Item, Verdict

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


class FakeGrader:
    """The last word of the text is the prediction."""

    def grade(self, item: Item, text: str) -> Verdict:
        words = text.split()
        prediction = words[-1] if words else None
        return Verdict(prediction == item.answer, prediction, "fake")


class FakeBackend:
    """Answers every job with the gold answer of its item (read from the prompt), unless told to cut it off;
    raises KeyboardInterrupt after `interrupt_after` replies."""

    def __init__(self, finish: str = "stop", interrupt_after: int | None = None, model: str = "fake") -> None:
        self.finish, self.interrupt_after, self.model = finish, interrupt_after, model
        self.seen: list[Job] = []

    def identity(self) -> dict:
        return {"backend": "fake", "model": self.model}

    @property
    def tokenizer(self):
        return None

    def run(self, jobs: Sequence[Job]) -> Iterator[tuple[int, Reply]]:
        for index, job in enumerate(jobs):
            if self.interrupt_after is not None and len(self.seen) == self.interrupt_after:
                raise KeyboardInterrupt
            self.seen.append(job)
            gold = re.search(r"gold=(\S+)", job.messages[-1]["content"]).group(1)
            text = f"thinking about it... the answer is {gold}"
            yield index, Reply(text, "thinking about it...", f"the answer is {gold}", self.finish, 10, 4, 6, [1, 2, 3])


def _dataset(n: int = 3) -> Dataset:
    items = [
        Item("toy", f"q{i}", "math", f"What is it? gold={i}", str(i), None, {"level": str(i % 2)}) for i in range(n)
    ]
    return Dataset("toy", "Toy", "math", items, "memory", published=50.0)


def _lines(out: Path) -> list[str]:
    return (out / SAMPLES_FILE).read_text(encoding="utf-8").splitlines()


def test_a_second_run_skips_every_finished_sample(tmp_path):
    first = FakeBackend()
    result = run_eval(_dataset(), first, RunSettings(temperature=0), tmp_path, samples=2, grader=FakeGrader())
    assert (result.new, result.resumed, len(first.seen)) == (6, 0, 6)
    again = FakeBackend()
    result = run_eval(_dataset(), again, RunSettings(temperature=0), tmp_path, samples=2, grader=FakeGrader())
    assert (result.new, result.resumed, again.seen) == (0, 6, [])
    assert len(_lines(tmp_path)) == 6
    more = FakeBackend()
    result = run_eval(_dataset(4), more, RunSettings(temperature=0), tmp_path, samples=3, grader=FakeGrader())
    assert (result.new, result.resumed) == (12 - 6, 6)  # a longer list and more samples extend the same run


def test_an_interrupted_run_with_a_torn_line_resumes_without_redoing(tmp_path):
    killed = FakeBackend(interrupt_after=2)
    with pytest.raises(KeyboardInterrupt):
        run_eval(_dataset(5), killed, RunSettings(), tmp_path, grader=FakeGrader())
    assert len(_lines(tmp_path)) == 2  # each finished sample was written when it ended
    with (tmp_path / SAMPLES_FILE).open("a", encoding="utf-8") as log:
        log.write('{"benchmark": "toy", "item": "q2", "sam')  # the process died mid-write
    rest = FakeBackend()
    result = run_eval(_dataset(5), rest, RunSettings(), tmp_path, grader=FakeGrader())
    assert (result.new, result.resumed) == (3, 2)
    assert [job.messages[-1]["content"][-1] for job in rest.seen] == ["2", "3", "4"]
    records = [json.loads(line) for line in _lines(tmp_path)]
    assert sorted(r["item"] for r in records) == ["q0", "q1", "q2", "q3", "q4"]
    assert all(r["correct"] and not r["no_answer"] for r in records)


def test_the_config_hash_follows_what_changes_replies():
    dataset, backend = _dataset(), FakeBackend()
    base = run_config(dataset, backend, RunSettings(temperature=0.7, max_tokens=100), DataOptions())
    same = run_config(_dataset(10), FakeBackend(), RunSettings(temperature=0.7, max_tokens=100), DataOptions())
    assert config_hash(base) == config_hash(same)  # more items (no --limit) is the same run
    for changed in (
        RunSettings(temperature=0.6, max_tokens=100),
        RunSettings(temperature=0.7, max_tokens=101),
        RunSettings(temperature=0.7, max_tokens=100, top_p=0.9),
        RunSettings(temperature=0.7, max_tokens=100, controls={"max_thinking_tokens": 50}),
        RunSettings(temperature=0.7, max_tokens=100, system="Be brief."),
    ):
        assert config_hash(run_config(dataset, backend, changed, DataOptions())) != config_hash(base)
    other_model = run_config(
        dataset, FakeBackend(model="other"), RunSettings(temperature=0.7, max_tokens=100), DataOptions()
    )
    assert config_hash(other_model) != config_hash(base)


def test_a_changed_config_runs_again_beside_the_old_samples(tmp_path):
    run_eval(_dataset(), FakeBackend(), RunSettings(temperature=0), tmp_path, grader=FakeGrader())
    hotter = FakeBackend()
    result = run_eval(_dataset(), hotter, RunSettings(temperature=1.0), tmp_path, grader=FakeGrader())
    assert result.new == 3 and len(hotter.seen) == 3 and len(_lines(tmp_path)) == 6
    assert len(json.loads((tmp_path / "config.json").read_text())) == 2


def test_seeded_samples_get_seed_plus_index():
    settings = RunSettings(temperature=0.7, seed=10, controls={"loop": "stop"})
    assert settings.params(2) == {"temperature": 0.7, "seed": 12, "loop": "stop"}
    assert "seed" not in RunSettings().params(3)


def test_cut_off_replies_are_wrong_and_counted_apart(tmp_path):
    result = run_eval(_dataset(), FakeBackend(finish="length"), RunSettings(), tmp_path, grader=FakeGrader())
    records = list(read_records(result.samples_path))
    assert all(not r["correct"] and r["no_answer"] and r["graded_correct"] for r in records)
    assert all(r["finish_reason"] == "length" and r["prediction"] == r["gold"] for r in records)


def test_a_reply_without_an_answer_is_not_graded(tmp_path):
    class Silent(FakeBackend):
        def run(self, jobs):
            for index, _ in enumerate(jobs):
                yield index, Reply("still thinking", "still thinking", "", "length", 5, 2, 0)

    result = run_eval(_dataset(2), Silent(), RunSettings(), tmp_path, grader=FakeGrader())
    records = list(read_records(result.samples_path))
    assert [(r["prediction"], r["correct"], r["no_answer"]) for r in records] == [(None, False, True)] * 2


def test_failed_samples_are_retried_on_resume(tmp_path):
    class Failing(FakeBackend):
        def run(self, jobs):
            for index, _ in enumerate(jobs):
                yield index, Reply.failed("HTTP 500")

    run_eval(_dataset(2), Failing(), RunSettings(), tmp_path, grader=FakeGrader())
    retry = FakeBackend()
    result = run_eval(_dataset(2), retry, RunSettings(), tmp_path, grader=FakeGrader())
    assert result.new == 2 and len(retry.seen) == 2
    latest = list(latest_records(tmp_path / SAMPLES_FILE))
    assert len(latest) == 2 and all(r["finish_reason"] == "stop" for r in latest)


def test_code_items_are_graded_off_the_generating_thread(tmp_path):
    items = [
        Item("toy", f"c{i}", "code", f"write it gold={i}", str(i), {"kind": "stdin", "cases": []}) for i in range(4)
    ]
    dataset = Dataset("toy", "Toy", "code", items, "memory")
    result = run_eval(dataset, FakeBackend(), RunSettings(), tmp_path, grader=FakeGrader())
    assert result.new == 4
    assert sorted(r["item"] for r in read_records(result.samples_path)) == ["c0", "c1", "c2", "c3"]


def test_a_torn_line_in_the_middle_of_a_log_is_an_error(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"a": 1}\n{"a": \n{"a": 3}\n', encoding="utf-8")
    with pytest.raises(InvalidRequestError, match="line 2"):
        list(read_records(path, tolerate_torn_end=True))


def test_appending_after_a_complete_line_without_newline_keeps_it(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}', encoding="utf-8")
    with open_for_append(path) as log:
        append_record(log, {"a": 3})
    assert [r["a"] for r in read_records(path)] == [1, 2, 3]


# -- the benchmark files


EXPECTED = {  # benchmark: (items, task, first id, first answer)
    "math500": (500, "math", "test/precalculus/807.json", r"\left( 3, \frac{\pi}{2} \right)"),
    "aime24": (30, "math", "60", "204"),
    "aime25": (30, "math", "2025-I-1", "70"),
    "amc23": (40, "math", "0", "27"),
    "humaneval": (164, "code", "HumanEval/0", ""),
    "livecodebench": (50, "code", "lcb-0", ""),
    "commonsenseqa": (1221, "mcq", "1afa02df02c908a558b4036e80242fac", "A"),
    "winogrande": (1267, "mcq", "3FCO4VKOZ4BJQ6IFC0VAIBK4KTWE7U-2", "B"),
    "piqa": (1838, "mcq", "c36c629e-12e9-43cc-8936-e1a96d869ab0", "A"),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_benchmark_loads_its_shared_data_file(name):
    count, task, first_id, first_answer = EXPECTED[name]
    dataset = load_dataset(name, data_dir=DATA)
    assert Path(dataset.source).parent == DATA
    assert (len(dataset.items), dataset.task, dataset.items[0].id, dataset.items[0].answer) == (
        count,
        task,
        first_id,
        first_answer,
    )
    assert all(item.task == task and item.benchmark == name for item in dataset.items)
    assert len({item.id for item in dataset.items}) == count
    if task == "math":
        assert all(
            item.prompt.endswith(r"put your final answer within \boxed{}.") and item.answer for item in dataset.items
        )
    if task == "mcq":
        letters = "ABCDE" if name == "commonsenseqa" else "AB"
        assert all(item.answer in letters and f"one of {letters}." in item.prompt for item in dataset.items)
    if task == "code":
        assert all(item.tests and item.tests["kind"] in ("humaneval", "stdin", "call") for item in dataset.items)


def test_answer_distributions_match_the_data_readme():
    csqa = [i.answer for i in load_dataset("commonsenseqa", data_dir=DATA).items]
    assert {letter: csqa.count(letter) for letter in "ABCDE"} == {"A": 239, "B": 255, "C": 241, "D": 251, "E": 235}
    wino = [i.answer for i in load_dataset("winogrande", data_dir=DATA).items]
    assert (wino.count("A"), wino.count("B")) == (628, 639)
    piqa = [i.answer for i in load_dataset("piqa", data_dir=DATA).items]
    assert (piqa.count("A"), piqa.count("B")) == (910, 928)
    levels = [i.meta["level"] for i in load_dataset("math500", data_dir=DATA).items]
    assert {lv: levels.count(lv) for lv in "12345"} == {"1": 43, "2": 90, "3": 105, "4": 128, "5": 134}


def test_the_data_folder_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("QWQ_EVAL_DATA", str(DATA))
    assert load_dataset("aime24").source == str(DATA / "aime24.jsonl")


def test_livecodebench_sample_decodes_both_test_encodings_and_the_call_format():
    items = load_dataset("livecodebench", data_file=DATA / "livecodebench_format_sample.jsonl").items
    assert len(items) == 5
    rows = list(read_records(DATA / "livecodebench_format_sample.jsonl"))
    for item, row in zip(items, rows, strict=True):
        assert item.meta["private_tests"] > 0  # both the compressed and the plain JSON rows decoded
        assert item.tests["kind"] == ("call" if row["starter_code"] else "stdin")
        if row["starter_code"]:
            assert item.tests["fn_name"] == json.loads(row["metadata"])["func_name"]
            assert row["starter_code"].strip() in item.prompt and "starter code" in item.prompt
        else:
            assert "Read the inputs from stdin" in item.prompt


def test_livecodebench_date_window_and_releases():
    path = DATA / "livecodebench_format_sample.jsonl"
    since = load_dataset("livecodebench", data_file=path, options=DataOptions(since=date(2025, 1, 10)))
    assert 0 < len(since.items) < 5 and all(i.meta["contest_date"] >= "2025-01-10" for i in since.items)
    files = ["test.jsonl", "test2.jsonl", "test3.jsonl", "test4.jsonl", "test5.jsonl", "test6.jsonl", "README.md"]
    assert livecodebench.release_files("release_v3", files) == ["test.jsonl", "test2.jsonl", "test3.jsonl"]
    assert livecodebench.release_files("v1", files) == ["test.jsonl"]
    assert livecodebench.release_files("v4_v5", files) == ["test4.jsonl", "test5.jsonl"]
    assert livecodebench.release_files("release_latest", files) == files[:-1]
    with pytest.raises(InvalidRequestError, match="no file"):
        livecodebench.release_files("release_v9", files)


def test_compressed_tests_with_a_class_in_the_pickle_are_refused():
    plain = [{"input": "1\n", "output": "2\n", "testtype": "stdin"}]
    packed = base64.b64encode(zlib.compress(pickle.dumps(json.dumps(plain)))).decode()
    assert livecodebench.decode_tests(packed) == plain
    hostile = base64.b64encode(zlib.compress(pickle.dumps(Path("/etc")))).decode()
    with pytest.raises(InvalidRequestError, match="neither JSON"):
        livecodebench.decode_tests(hostile)


def test_gpqa_shuffles_are_seeded_per_item_and_reproducible():
    path = DATA / "gpqa_format_sample.jsonl"
    rows = list(read_records(path))
    first = load_dataset("gpqa-diamond", data_file=path).items
    again = load_dataset("gpqa-diamond", data_file=path).items
    assert [(i.prompt, i.answer, i.meta["shuffle_seed"]) for i in first] == [
        (i.prompt, i.answer, i.meta["shuffle_seed"]) for i in again
    ]
    for item, row in zip(first, rows, strict=True):
        assert item.task == "mcq" and item.id == row["Record ID"] and item.meta["synthetic"]
        correct_line = next(line for line in item.prompt.splitlines() if line.startswith(f"{item.answer}) "))
        assert correct_line == f"{item.answer}) {row['Correct Answer'].strip()}"
        assert sorted(item.meta["order"]) == [0, 1, 2, 3]
    reseeded = [
        load_dataset("gpqa-diamond", data_file=path, options=DataOptions(shuffle_seed=s)).items for s in range(8)
    ]
    orders = {tuple(items[0].meta["order"]) for items in reseeded}
    assert len(orders) > 1  # the base seed changes the shuffles
    assert "Answer: $LETTER" in first[0].prompt and "one of ABCD" in first[0].prompt


def test_humaneval_item_carries_its_tests():
    item = load_dataset("humaneval", data_dir=DATA).items[0]
    assert item.tests["entry_point"] == "has_close_elements" and "def check(candidate)" in item.tests["test"]
    assert item.tests["prompt"].rstrip() in item.prompt and "```python" in item.prompt


def test_local_files_in_the_generic_layouts(tmp_path):
    math = tmp_path / "math.jsonl"
    math.write_text('{"id": "a", "problem": "1+1?", "answer": "2", "level": 1}\n', encoding="utf-8")
    item = load_dataset(None, data_file=math, task="math").items[0]
    assert (item.benchmark, item.id, item.answer, item.meta) == ("math", "a", "2", {"level": "1"})
    mcq = tmp_path / "mcq.jsonl"
    mcq.write_text(
        '{"id": "x", "question": "Sky?", "choices": ["green", "blue"], "answer": "B"}\n'
        '{"id": "y", "question": "Pick one\\nA) red\\nB) blue\\nC) green", "answer": "C"}\n',
        encoding="utf-8",
    )
    x, y = load_dataset(None, data_file=mcq, task="mcq").items
    assert x.answer == "B" and "B) blue" in x.prompt and "one of AB." in x.prompt
    assert y.answer == "C" and "one of ABC." in y.prompt
    code = tmp_path / "code.jsonl"
    code.write_text('{"id": "k", "question": "Print 1.", "tests": [{"input": "", "output": "1"}]}\n', encoding="utf-8")
    assert load_dataset(None, data_file=code, task="code").items[0].tests["kind"] == "stdin"
    with pytest.raises(InvalidRequestError, match="needs --task"):
        load_dataset(None, data_file=math)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "answer": "2"}\n', encoding="utf-8")
    with pytest.raises(InvalidRequestError, match=r"bad.jsonl: record 1 has no 'problem'"):
        load_dataset(None, data_file=bad, task="math")


def test_unknown_benchmark_names_the_known_ones():
    with pytest.raises(InvalidRequestError, match="math500"):
        load_dataset("math5000")
    assert {"math500", "aime24", "aime25", "amc23", "gpqa-diamond", "livecodebench", "humaneval"} <= set(BENCHMARKS)


def test_hub_loader_reads_the_files_it_fetches(monkeypatch, tmp_path):
    import huggingface_hub

    hub_file = tmp_path / "validation-00000-of-00001.jsonl"
    row = {"id": "h1", "question": "Q?", "choices": {"label": list("ABCDE"), "text": list("vwxyz")}, "answerKey": "D"}
    hub_file.write_text(json.dumps(row) + "\n", encoding="utf-8")
    asked = []
    monkeypatch.setattr(huggingface_hub, "list_repo_files", lambda repo, **kw: ["README.md", hub_file.name])
    monkeypatch.setattr(
        huggingface_hub, "hf_hub_download", lambda repo, name, **kw: asked.append(name) or str(hub_file)
    )
    rows, source = hub_rows("tau/commonsense_qa", ("*validation*.parquet", "*validation*.jsonl"))
    items = BENCHMARKS["commonsenseqa"].items(rows, DataOptions())
    assert asked == [hub_file.name] and source.startswith("hf://datasets/tau/commonsense_qa/")
    assert (items[0].id, items[0].answer) == ("h1", "D")


# -- the endpoint backend against a mock transport


def _endpoint(handler, **kw) -> EndpointBackend:
    client = httpx.Client(transport=httpx.MockTransport(handler))
    return EndpointBackend("http://server", "m", client=client, backoff=0.01, concurrency=2, **kw)


def _completion(content: str, reasoning: str | None = None, finish: str = "stop") -> dict:
    message = {"role": "assistant", "content": content, "reasoning_content": reasoning}
    usage = {"prompt_tokens": 7, "completion_tokens": 20}
    return {"choices": [{"index": 0, "message": message, "finish_reason": finish}], "usage": usage}


def test_endpoint_retries_overload_and_splits_the_reply():
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(json.loads(request.content))
        if len(calls) < 3:
            return httpx.Response(503, headers={"Retry-After": "0"}, text="busy")
        return httpx.Response(200, json=_completion("42", reasoning="six times seven"))

    backend = _endpoint(handler)
    job = Job([{"role": "user", "content": "6*7?"}], {"max_new_tokens": 64, "temperature": 0, "loop": "stop"})
    [(index, reply)] = list(backend.run([job]))
    assert index == 0 and len(calls) == 3
    assert (reply.reasoning, reply.answer, reply.finish_reason, reply.prompt_tokens) == (
        "six times seven",
        "42",
        "stop",
        7,
    )
    assert reply.reasoning_tokens + reply.answer_tokens == 20 and reply.reasoning_tokens > reply.answer_tokens
    assert calls[0]["max_tokens"] == 64 and calls[0]["repetition_detection"] == {"action": "stop"}


def test_endpoint_failures_fail_the_sample_or_the_run():
    backend = _endpoint(lambda request: httpx.Response(400, json={"error": {"message": "too long"}}))
    [(_, reply)] = list(backend.run([Job([{"role": "user", "content": "x"}], {})]))
    assert reply.finish_reason == "error" and "400" in reply.error
    flaky = _endpoint(lambda request: httpx.Response(502), retries=1)
    [(_, reply)] = list(flaky.run([Job([{"role": "user", "content": "x"}], {})]))
    assert reply.finish_reason == "error" and "gave up after 1 retries" in reply.error
    locked = _endpoint(lambda request: httpx.Response(401, text="bad key"))
    with pytest.raises(InvalidRequestError, match="401"):
        list(locked.run([Job([{"role": "user", "content": "x"}], {})]))


def test_endpoint_connection_errors_are_retried():
    attempts = []

    def handler(request: httpx.Request) -> httpx.Response:
        attempts.append(1)
        if len(attempts) == 1:
            raise httpx.ConnectError("refused")
        return httpx.Response(200, json=_completion("<think>hmm</think>\n\nB"))

    [(_, reply)] = list(_endpoint(handler).run([Job([{"role": "user", "content": "x"}], {})]))
    assert (reply.reasoning, reply.answer, len(attempts)) == ("hmm", "B", 2)


def test_endpoint_asks_the_server_for_its_model_when_none_is_named():
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/models"
        return httpx.Response(200, json={"data": [{"id": "served"}]})

    client = httpx.Client(transport=httpx.MockTransport(handler))
    assert EndpointBackend("http://server/v1/", client=client).model == "served"


def test_reply_messages_split_as_the_engine_splits_them():
    assert split_message({"content": "4", "reasoning": "2+2"}) == ("2+2", "4")
    assert split_message({"content": "<think>a</think>b"}) == ("a", "b")
    assert split_message({"content": "a</think>b"}) == ("a", "b")  # the template opened the reasoning
    assert split_message({"content": "plain"}) == ("", "plain")
    assert split_message({"content": "x\n**Final Answer**\n7"}, "qwq-preview") == ("x\n", "7")


def test_endpoint_body_carries_the_reasoning_controls():
    params = {"max_thinking_tokens": 100, "language_guard": "warn", "language": "en", "min_p": 0.05, "seed": 3}
    body = endpoint_body("m", Job([{"role": "user", "content": "x"}], params))
    assert body["thinking_token_budget"] == 100 and body["language_guard"] == {"mode": "warn", "language": "en"}
    assert body["min_p"] == 0.05 and body["seed"] == 3 and "temperature" not in body


# -- the report


def test_the_report_files_are_written_and_self_contained(tmp_path, monkeypatch):
    monkeypatch.setattr(report_module, "_equivalence", lambda task: str.__eq__)
    dataset = replace(_dataset(6), name="math500", title="MATH-500", published=90.6)
    items = [replace(item, benchmark="math500") for item in dataset.items]
    dataset = replace(dataset, items=items)
    run_eval(dataset, FakeBackend(), RunSettings(temperature=0.6), tmp_path, samples=4, grader=FakeGrader())
    files = report_module.write_report(tmp_path)
    page = files.html.read_text(encoding="utf-8")
    assert "90.6%" in page and "QwQ-32B-Preview (published)" in page and "pass@4" in page
    assert page.count('src="data:image/png;base64,') == 2
    assert not re.search(r'(?:src|href)="(?!data:)', page)  # nothing to fetch
    text = files.markdown.read_text(encoding="utf-8")
    assert "| MATH-500 | 6 | 4 | 100.0% [" in text and "![Reply lengths](plots/" in text
    assert all(path.read_bytes().startswith(b"\x89PNG") for path in files.plots)
    [summary] = json.loads(files.summary.read_text())
    assert summary["accuracy"] == 100.0 and summary["pass_at"] == {"1": 100.0, "2": 100.0, "4": 100.0}
    assert summary["majority"] == 100.0 and summary["breakdowns"]["level"][0]["items"] == 3
    assert summary["loop_rate"] == 0.0 and summary["no_answer_rate"] == 0.0
