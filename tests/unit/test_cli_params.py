"""Every sampling and control flag of `run`, `serve` and `eval run` comes from one module and is checked before
a model is looked for (the model here does not exist: a check made after loading would report that instead),
the error naming the flag as typed."""

from __future__ import annotations

import pytest

from qwq.cli.main import _parser, main
from qwq.cli.params import params_from
from qwq.engine.request import GenerationParams
from qwq.server.service import Service

MISSING = "/nonexistent/model.gguf"
COMMANDS = {
    "run": ["run", MISSING, "hi"],
    "serve": ["serve", MISSING, "--port", "1"],
    "eval": ["eval", "run", "math500", "--model", MISSING],
}
SAMPLING = [
    ("--temperature", "-1", "--temperature must be a number in [0.0, inf], got -1.0"),
    ("--top-p", "0", "--top-p must be greater than 0"),
    ("--top-k", "-1", "--top-k must be an integer at least 0, got -1"),
    ("--min-p", "2", "--min-p must be a number in [0.0, 1.0], got 2.0"),
    ("--seed", str(2**64), "--seed must be an integer in [-9223372036854775808, 18446744073709551615]"),
    ("--max-tokens", "0", "--max-tokens must be an integer at least 1, got 0"),
]
CONTROLS = [
    ("--think-budget", "0", "--think-budget must be an integer at least 1, got 0"),
    ("--answer-budget", "0", "--answer-budget must be an integer at least 1, got 0"),
]
CASES = [
    *((command, *case) for command in COMMANDS for case in SAMPLING),
    *((command, *case) for command in ("run", "serve") for case in [("--repeat-penalty", "0", "--repeat-penalty")]),
    *((command, *case) for command in ("run", "eval") for case in CONTROLS),
]


@pytest.mark.parametrize(("command", "flag", "value", "message"), CASES)
def test_a_bad_flag_is_named_before_the_model_is_looked_for(command, flag, value, message, tmp_path, capsys):
    arguments = [*COMMANDS[command], flag, value] + (["--out", str(tmp_path)] if command == "eval" else [])
    assert main(arguments) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and message in error, error
    assert len(error.splitlines()) == 1 and "nonexistent" not in error
    assert "max_tokens" not in error and "max_thinking_tokens" not in error


def test_serve_checks_its_own_flags_first(capsys):
    assert main(["serve", MISSING, "--keep-alive", "soon"]) == 1
    assert "--keep-alive: 'soon' is not a duration" in capsys.readouterr().err
    assert main(["serve", MISSING, "--max-loaded", "0"]) == 1
    assert "--max-loaded must be at least 1, got 0" in capsys.readouterr().err


def test_the_sampling_flags_are_server_defaults():
    """`qwq serve --temperature 0 --max-tokens 5` fills what a request leaves unset; a request's own wins."""
    defaults = params_from(_parser().parse_args(["serve", "--temperature", "0", "--max-tokens", "5"]))
    service = Service(model=None, engine=None, name="x", defaults=defaults)  # only its request defaults are used
    filled = service._with_defaults(GenerationParams.of(top_k=3))
    assert (filled.temperature, filled.max_tokens, filled.top_k) == (0, 5, 3)
    own = service._with_defaults(GenerationParams.of(temperature=0.7))
    assert (own.temperature, own.max_tokens) == (0.7, 5)
