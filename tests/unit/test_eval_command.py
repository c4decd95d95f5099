"""`qwq eval score` and `qwq eval report` called as the CLI's `main` (no model needed), and the checks of
`qwq eval run` that come before any model is loaded."""

from __future__ import annotations

import json

import pytest

from qwq.cli.main import main


def test_score_grades_a_file_of_replies(tmp_path, capsys):
    replies = tmp_path / "replies.jsonl"
    rows = [
        {"id": 1, "question": "1+1?", "answer": "2", "response": r"So \boxed{2}."},
        {"id": 2, "question": "2+2?", "answer": "4", "response": r"It is \boxed{5}."},
        {"id": 3, "question": "3+3?", "answer": "6", "response": "Let me think and"},
    ]
    replies.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "scored.jsonl"
    assert main(["eval", "score", str(replies), "--task", "math", "--out", str(out)]) == 0
    scored = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["id"], r["prediction"], r["correct"]) for r in scored] == [
        (1, "2", True),
        (2, "5", False),
        (3, None, False),
    ]
    assert "1/3 correct (33.3%)" in capsys.readouterr().err


def test_score_refuses_the_code_task(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["eval", "score", str(tmp_path / "x.jsonl"), "--task", "code"])
    assert "invalid choice: 'code'" in capsys.readouterr().err


def test_report_of_a_folder_without_a_run_is_one_error(tmp_path, capsys):
    assert main(["eval", "report", str(tmp_path)]) == 1
    assert (
        capsys.readouterr().err.strip()
        == f"error: {tmp_path}: no samples.jsonl (is it the --out folder of a qwq eval run?)"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "x.jsonl"], "needs --task"),
        (["gpqa-diamond", "--task", "math", "--data", "x.jsonl"], "gpqa-diamond is a mcq benchmark, not math"),
        ([], "name a benchmark"),
        (["math500", "--concurrency", "0"], "--concurrency must be at least 1"),
        (["math500", "--timeout", "0"], "--timeout must be a positive number"),
    ],
)
def test_run_checks_its_arguments_before_loading(tmp_path, capsys, args, message):
    (tmp_path / "x.jsonl").write_text('{"id": "a", "problem": "p", "answer": "1"}\n', encoding="utf-8")
    fixed = [str(tmp_path / a) if a == "x.jsonl" else a for a in args]
    assert main(["eval", "run", *fixed, "--endpoint", "http://127.0.0.1:9", "--out", str(tmp_path / "o")]) == 1
    assert message in capsys.readouterr().err
