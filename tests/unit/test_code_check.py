"""The code checker: the code block it takes from a reply, HumanEval's programs (canonical solutions pass, wrong
ones fail), LiveCodeBench's comparisons, and the benchmark loaders' items from the real data files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from qwq.eval.benchmarks.humaneval import humaneval_items
from qwq.eval.benchmarks.livecodebench import livecodebench_items
from qwq.eval.benchmarks.spec import DataOptions
from qwq.eval.code_check import check_code, extract_code, humaneval_program, lcb_program, stdout_matches
from qwq.eval.sandbox import SandboxLimits
from qwq.eval.types import Item

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"  # the checkout's shared/data
FAST = SandboxLimits(wall_seconds=5.0, cpu_seconds=5)


def records(name: str) -> list[dict[str, Any]]:
    path = DATA / name
    if not path.exists():
        pytest.fail(f"{path} is missing (see shared/data/README.md)")
    return [json.loads(line) for line in path.read_text().splitlines()]


def fenced(code: str, tag: str = "python") -> str:
    return f"Here is my solution.\n\n```{tag}\n{code}\n```\n"


def item(tests: dict[str, Any]) -> Item:
    return Item("hand-made", "1", "code", "a problem", tests=tests)


# extract_code


def test_the_last_python_block_is_taken() -> None:
    reply = "Try:\n```python\nprint(1)\n```\nBetter:\n```python\nprint(2)\n```\nSample output:\n```\n2\n```"
    assert extract_code(reply) == "print(2)\n"


def test_an_untagged_block_is_taken_when_no_python_block_is_there() -> None:
    assert extract_code("```\nprint(3)\n```") == "print(3)\n"
    assert extract_code("```py\nx = 1\n```") == "x = 1\n"
    assert extract_code("```Python3\nx = 2\n```") == "x = 2\n"


def test_no_block_or_a_cut_off_block_gives_none() -> None:
    assert extract_code("The answer is to loop over the list.") is None
    assert extract_code("```python\ndef f():\n    return 1") is None  # cut off inside the block
    assert extract_code("```python\nprint(1)\n```\n\n```python\nprint(2") == "print(1)\n"
    assert extract_code("```python\n\n```") is None


def test_a_block_in_a_list_item_loses_only_the_fence_indentation() -> None:
    reply = "1. Code:\n   ```python\n   def f():\n       return 1\n   ```"
    assert extract_code(reply) == "def f():\n    return 1\n"
    assert extract_code("```python\n    return x + 1\n```") == "    return x + 1\n"  # a body, kept indented


# HumanEval


@pytest.fixture(scope="module")
def humaneval() -> list[tuple[Item, dict[str, Any]]]:
    found = records("humaneval.jsonl")
    return list(zip(humaneval_items(found, DataOptions()), found, strict=True))


def test_canonical_solutions_pass_as_whole_functions_and_as_bodies(humaneval: list) -> None:
    for case, (problem, record) in enumerate(humaneval[:20]):
        if case % 2:  # the whole function, as the prompt asks
            reply = fenced(record["prompt"] + record["canonical_solution"])
        else:  # only the body, continuing the stub
            reply = fenced(record["canonical_solution"].rstrip("\n"))
        verdict = check_code(problem, reply, FAST)
        assert verdict.correct, (problem.id, verdict.detail)


def test_a_wrong_solution_fails_with_the_reason(humaneval: list) -> None:
    problem, record = humaneval[0]
    wrong = check_code(problem, fenced(f"def {record['entry_point']}(numbers, threshold):\n    return False"), FAST)
    assert not wrong.correct and "AssertionError" in wrong.detail
    assert check_code(problem, "I could not solve it.").prediction is None


def test_a_full_function_keeps_the_prompts_helpers(humaneval: list) -> None:
    problem, record = next((p, r) for p, r in humaneval if r["entry_point"] == "decode_cyclic")
    solution = "def decode_cyclic(s: str):\n    return encode_cyclic(encode_cyclic(s))"
    program = humaneval_program(problem.tests or {}, solution)
    assert program.count("def encode_cyclic") == 1 and program.count("def decode_cyclic") == 1
    assert check_code(problem, fenced(solution), FAST).correct


def test_a_hanging_solution_fails_as_a_timeout(humaneval: list) -> None:
    problem, record = humaneval[0]
    verdict = check_code(
        problem,
        fenced("def has_close_elements(numbers, threshold):\n    while True:\n        pass"),
        SandboxLimits(wall_seconds=1.0),
    )
    assert not verdict.correct and verdict.detail == "time limit exceeded"


# LiveCodeBench comparisons


def test_stdout_is_compared_as_livecodebench_compares() -> None:
    assert stdout_matches("3\n", "3")
    assert stdout_matches("1 2  \n3\n\n", "1 2\n3")  # trailing spaces and blank lines at the end
    assert stdout_matches("1.50 2\n", "1.5 2.0")  # equal as Decimals
    assert not stdout_matches("0.3333\n", "0.33333")  # no tolerance
    assert not stdout_matches("1 2\n", "1\n2\n")  # a different number of lines
    assert not stdout_matches("Yes\n", "YES")
    assert not stdout_matches("sNaN\n", "1")


STDIN_SUM = {"kind": "stdin", "cases": [{"input": "1 2\n", "output": "3\n"}, {"input": "10 -4\n", "output": "6\n"}]}


def test_stdin_problems_pass_only_when_every_case_does() -> None:
    right = "a, b = map(int, input().split())\nprint(a + b)"
    assert check_code(item(STDIN_SUM), fenced(right), FAST).correct
    off_on_second = "a, b = map(int, input().split())\nprint(a + b if a < 5 else 0)"
    verdict = check_code(item(STDIN_SUM), fenced(off_on_second), FAST)
    assert not verdict.correct and verdict.detail.startswith("case 2/2: wrong answer")


def test_stdin_failures_name_the_case_and_the_cause() -> None:
    crash = check_code(item(STDIN_SUM), fenced("print(1 / 0)"), FAST)
    assert crash.detail.startswith("case 1/2: runtime error") and "ZeroDivisionError" in crash.detail
    slow = check_code(item(STDIN_SUM), fenced("while True:\n    pass"), SandboxLimits(wall_seconds=1.0))
    assert slow.detail == "case 1/2: time limit exceeded"
    hungry = check_code(item(STDIN_SUM), fenced("x = bytearray(1 << 40)"), FAST)
    assert hungry.detail == "case 1/2: memory limit exceeded"


def test_the_prelude_is_there_and_future_imports_stay_first() -> None:
    code = "from __future__ import annotations\nprint(gcd(12, 18), deque([1]).pop(), sqrt(16))"
    assert lcb_program(code).startswith("from __future__ import annotations\n")
    tests = {"kind": "stdin", "cases": [{"input": "", "output": "6 1 4.0"}]}
    assert check_code(item(tests), fenced(code), FAST).correct


CALL_TESTS = {
    "kind": "call",
    "fn_name": "twoSum",
    "cases": [{"input": "[2, 7, 11, 15]\n9", "output": "[0, 1]"}, {"input": "[3, 2, 4]\n6", "output": "[1, 2]"}],
}


def test_call_based_problems_call_the_solution_method() -> None:
    solution = (
        "class Solution:\n    def twoSum(self, nums: List[int], target: int) -> List[int]:\n"
        "        print('debugging output does not count')\n        seen = {}\n"
        "        for i, x in enumerate(nums):\n            if target - x in seen:\n"
        "                return (seen[target - x], i)\n            seen[x] = i\n\n"
        "print(Solution().twoSum([1, 2], 3))  # example use, at the top level"
    )
    assert check_code(item(CALL_TESTS), fenced(solution), FAST).correct  # a tuple counts as a list
    top_level = "def twoSum(nums, target):\n    return [0, 1]"
    verdict = check_code(item(CALL_TESTS), fenced(top_level), FAST)
    assert not verdict.correct and verdict.detail == "case 2/2: wrong answer: expected '[1, 2]', got '[0, 1]'"
    unserializable = "class Solution:\n    def twoSum(self, nums, target):\n        return {0, 1}"
    assert "runtime error" in check_code(item(CALL_TESTS), fenced(unserializable), FAST).detail


# The loaders' items from the real files


def test_reference_solutions_of_the_format_sample_pass() -> None:
    found = records("livecodebench_format_sample.jsonl")
    items = livecodebench_items(found, DataOptions())
    assert {i.tests["kind"] for i in items if i.tests} == {"stdin", "call"}
    for problem, record in zip(items, found, strict=True):
        verdict = check_code(problem, fenced(record["_reference_solution"]), FAST)
        assert verdict.correct, (problem.id, verdict.detail)
        assert not check_code(problem, fenced("print(0)"), FAST).correct


def test_real_public_subset_items_are_checked() -> None:
    found = records("livecodebench_public_subset.jsonl")
    by_source = {r["_source_index"]: i for r, i in zip(found, livecodebench_items(found, DataOptions()), strict=True)}
    leap_year = by_source[1]
    assert leap_year.tests and leap_year.tests["kind"] == "stdin"
    days = "y = int(input())\nprint(366 if y % 4 == 0 and (y % 100 != 0 or y % 400 == 0) else 365)"
    assert check_code(leap_year, fenced(days), FAST).correct
    assert not check_code(leap_year, fenced("print(365)"), FAST).correct
    key = by_source[94]
    assert key.tests and key.tests["kind"] == "call" and key.tests["fn_name"] == "generateKey"
    solution = (
        "class Solution:\n    def generateKey(self, num1: int, num2: int, num3: int) -> int:\n"
        "        digits = zip(*(f'{n:04d}' for n in (num1, num2, num3)))\n"
        "        return int(''.join(min(d) for d in digits))"
    )
    assert check_code(key, fenced(solution), FAST).correct
