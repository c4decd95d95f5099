"""Grade a code reply: take its last Python code block and run it against the item's tests in the sandbox.

HumanEval: the completion, the problem's tests and `check(entry_point)` as one program, passing iff it exits
0. LiveCodeBench: each case in a run of its own, as its grader (`lcb_runner/evaluation/testing_util.py`) does
it: the program starts with the same star imports; stdin/stdout outputs match when their stripped lines are
equal, or parse as equal Decimals token by token; a call-based answer matches when it `==` the expected JSON
value (a tuple counts as a list). A sample passes only if every case does; the first failure ends it.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any

from qwq.errors import InvalidRequestError
from qwq.eval.sandbox import SandboxLimits, SandboxResult, run_python
from qwq.eval.types import Item, Verdict

CODE_LIMITS = SandboxLimits(wall_seconds=6.0, cpu_seconds=6, memory_bytes=2 << 30)  # LCB: 6 s a test

_FENCE = re.compile(r"^([ \t]*)```[ \t]*([\w+.#-]*)[^\n]*\n(.*?)^[ \t]*```[ \t]*$", re.MULTILINE | re.DOTALL)
_PYTHON_TAGS = frozenset({"python", "python3", "py"})
_FUTURE = re.compile(r"^from __future__ import [^\n]*\n?", re.MULTILINE)

_LCB_MODULES = ("string", "re", "datetime", "collections", "heapq", "bisect", "copy", "math", "random")
_LCB_MODULES += ("statistics", "itertools", "functools", "operator", "io", "sys", "json")
# What LiveCodeBench's grader puts before every solution (solutions use List, defaultdict, ... unimported).
LCB_PRELUDE = (
    "".join(f"from {name} import *\n" for name in (*_LCB_MODULES, "builtins", "typing"))
    + "".join(f"import {name}\n" for name in _LCB_MODULES)
    + "sys.setrecursionlimit(50000)\n"
)

# Call-based programs: the answer goes out as JSON on the real stdout, set aside before the solution runs so
# that its own prints (sent to stderr) cannot garble it; the driver, after it, reads one JSON argument a line.
_STDOUT_ASIDE = "import sys as _qwq_sys\n_qwq_answer_out, _qwq_sys.stdout = _qwq_sys.stdout, _qwq_sys.stderr\n"
_CALL_DRIVER = """

def _qwq_call(name):
    import json
    args = [json.loads(line) for line in _qwq_sys.stdin.read().split("\\n") if line.strip()]
    solution = globals().get("Solution")
    if isinstance(solution, type) and hasattr(solution, name):
        function = getattr(solution(), name)
    else:
        function = globals()[name]
    answer = function(*args)
    _qwq_answer_out.write(json.dumps(list(answer) if isinstance(answer, tuple) else answer))
    _qwq_answer_out.flush()


_qwq_call({name!r})
"""


def extract_code(reply: str) -> str | None:
    """The last ```python (or ```py) block of the reply, else its last untagged ``` block; None when it has
    neither closed (e.g. the reply was cut off inside the block) or the block is empty."""
    blocks = [(m.group(2).lower(), _outdent(m.group(3), m.group(1))) for m in _FENCE.finditer(reply)]
    for tags in (_PYTHON_TAGS, frozenset({""})):
        chosen = [code for tag, code in blocks if tag in tags]
        if chosen:
            return chosen[-1] if chosen[-1].strip() else None
    return None


def _outdent(code: str, indent: str) -> str:
    """A block's lines less its fence's indentation (a block in a list item), and no more: a HumanEval reply
    may be an indented function body."""
    return "".join(line.removeprefix(indent) for line in code.splitlines(keepends=True))


def check_code(item: Item, reply: str, limits: SandboxLimits = CODE_LIMITS) -> Verdict:
    """Run the reply's code against `item.tests` ({"kind": "humaneval" | "stdin" | "call", ...}); the Verdict's
    prediction is the code that was run, its detail why it failed (which case, and how)."""
    code = extract_code(reply)
    if code is None:
        return Verdict(False, None, "no code block in the reply")
    tests = item.tests or {}
    kind = tests.get("kind")
    if kind == "humaneval":
        result = run_python(humaneval_program(tests, code), limits=limits)
        return Verdict(result.ok, code, "passed" if result.ok else _failure(result))
    if kind == "stdin":
        return _check_cases(code, lcb_program(code), tests["cases"], _stdout_case, limits)
    if kind == "call":
        program = lcb_program(_STDOUT_ASIDE + code) + _CALL_DRIVER.format(name=str(tests["fn_name"]))
        return _check_cases(code, program, tests["cases"], _call_case, limits)
    raise InvalidRequestError(f"item {item.id!r}: unknown code test kind {kind!r}", field="tests")


def humaneval_program(tests: dict[str, Any], code: str) -> str:
    """The program HumanEval runs. Code that defines the entry point replaces the prompt's stub (the prompt's
    imports and helper functions stay, since tests and solutions use them); other code continues the stub."""
    prompt, entry_point = str(tests["prompt"]), str(tests["entry_point"])
    completion = _without_function(prompt, entry_point) + code if _defines(code, entry_point) else prompt + code
    return f"{completion}\n\n{tests['test']}\n\ncheck({entry_point})\n"


def lcb_program(code: str) -> str:
    """LiveCodeBench's prelude, then the solution (its `from __future__` imports kept first, where they must be)."""
    futures = "".join(line if line.endswith("\n") else line + "\n" for line in _FUTURE.findall(code))
    return futures + LCB_PRELUDE + "\n" + _FUTURE.sub("", code)


def stdout_matches(output: str, expected: str) -> bool:
    """LiveCodeBench's stdin/stdout comparison: the same number of stripped lines, each equal as text or, token
    by token, as Decimals (so "1.50" matches "1.5", but "0.3333" does not match "0.33333")."""
    got, want = _stripped_lines(output), _stripped_lines(expected)
    if len(got) != len(want):
        return False
    for line, wanted in zip(got, want, strict=True):
        if line == wanted:
            continue
        numbers, wanted_numbers = _decimals(line), _decimals(wanted)
        if numbers is None or wanted_numbers is None:
            return False
        try:
            if numbers != wanted_numbers:
                return False
        except InvalidOperation:  # a signalling NaN refuses to be compared
            return False
    return True


def _stripped_lines(text: str) -> list[str]:
    return [line.strip() for line in text.strip().split("\n")]


def _decimals(line: str) -> list[Decimal] | None:
    try:
        return [Decimal(token) for token in line.split()]
    except InvalidOperation:
        return None


def _defines(code: str, name: str) -> bool:
    try:
        tree = ast.parse(code)
    except SyntaxError:  # e.g. an indented function body, which continues the prompt
        return False
    return any(isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == name for node in tree.body)


def _without_function(source: str, name: str) -> str:
    """`source` with its top-level function `name` (decorators included) cut out."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return source + "\n"
    lines = source.splitlines(keepends=True)
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == name:
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)]) - 1
            del lines[first : node.end_lineno]
            break
    return "".join(lines) + "\n"


def _check_cases(
    code: str,
    program: str,
    cases: list[dict[str, Any]],
    check_case: Callable[[str, str], str | None],
    limits: SandboxLimits,
) -> Verdict:
    if not cases:
        raise InvalidRequestError("a code item has no test cases", field="tests")
    for number, case in enumerate(cases, 1):
        result = run_python(program, str(case["input"]), limits=limits)
        problem = _failure(result) if not result.ok else check_case(result.stdout, str(case["output"]))
        if problem:
            return Verdict(False, code, f"case {number}/{len(cases)}: {problem}")
    return Verdict(True, code, f"passed {len(cases)} cases")


def _stdout_case(output: str, expected: str) -> str | None:
    if stdout_matches(output, expected):
        return None
    return f"wrong answer: expected {_clip(expected)}, got {_clip(output)}"


def _call_case(output: str, expected: str) -> str | None:
    try:
        wanted = json.loads(expected)
    except json.JSONDecodeError as exc:
        raise InvalidRequestError(f"a call-based case's output is not JSON: {_clip(expected)}", field="tests") from exc
    try:
        answer = json.loads(output)
    except json.JSONDecodeError:
        return f"wrong answer: the function's result is not a JSON value ({_clip(output)})"
    if answer == wanted:
        return None
    return f"wrong answer: expected {_clip(expected)}, got {_clip(output)}"


def _failure(result: SandboxResult) -> str:
    if result.timed_out:
        return "time limit exceeded"
    if result.memory_exceeded:
        return "memory limit exceeded"
    if result.output_truncated:
        return "output limit exceeded"
    last = next((line for line in reversed(result.stderr.splitlines()) if line.strip()), "")
    return f"runtime error (exit {result.returncode}): {_clip(last)}"


def _clip(text: str, limit: int = 200) -> str:
    text = text.strip()
    return repr(text if len(text) <= limit else text[:limit] + "...")
