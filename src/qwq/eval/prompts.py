r"""The user messages of each task, worded as the published evaluations word them, and the system prompt.

Maths: the problem, then Qwen's instruction to reason step by step and box the answer (Qwen2.5-Math and the
QwQ model card). Multiple choice: the question, the lettered options and an instruction to end with an
"Answer: LETTER" line (the simple-evals GPQA protocol). LiveCodeBench: its generic-model format (a question
section, then starter code for call-based problems or the stdin/stdout instruction). HumanEval: the function
stub to be completed in one code block. PROMPT_VERSION names this wording in every run's configuration hash:
change it whenever a template changes, so old replies are not taken for answers to new prompts.
"""

from __future__ import annotations

from collections.abc import Sequence

from qwq.presets import QWQ_SYSTEM_PROMPT

PROMPT_VERSION = "1"
LETTERS = "ABCDEFGHIJ"

MATH_INSTRUCTION = r"Please reason step by step, and put your final answer within \boxed{}."

_MCQ_INSTRUCTION = (
    "Answer the following multiple choice question. The last line of your response should be of the following "
    "format: 'Answer: $LETTER' (without quotes) where LETTER is one of {letters}. Think step by step before "
    "answering."
)

_LCB_SYSTEM = (
    "You are an expert Python programmer. You will be given a question (problem specification) and will generate "
    "a correct Python program that matches the specification and passes all tests."
)
_LCB_STARTER = (
    "### Format: You will use the following starter code to write the solution to the problem and enclose your "
    "code within delimiters.\n```python\n{starter}\n```\n\n"
)
_LCB_STDIN = (
    "### Format: Read the inputs from stdin solve the problem and write the answer to stdout (do not directly test "
    "on the sample inputs). Enclose your code within delimiters as follows. Ensure that when the python program "
    "runs, it reads the inputs, runs the algorithm and writes output to STDOUT.\n```python\n# YOUR CODE HERE\n```\n\n"
)

_LCB_ANSWER = "### Answer: (use the provided format with backticks)\n\n"

_HUMANEVAL_INSTRUCTION = (
    "Complete the following Python function. Reply with the whole function, its signature included, in one "
    "```python code block."
)


def math_prompt(problem: str) -> str:
    return f"{problem.strip()}\n{MATH_INSTRUCTION}"


def mcq_prompt(question: str, options: Sequence[str]) -> str:
    """The question and its options lettered A, B, ... in the order given (shuffle them before, if at all)."""
    letters = LETTERS[: len(options)]
    lines = "\n".join(f"{letter}) {option.strip()}" for letter, option in zip(letters, options, strict=True))
    return f"{mcq_instruction(letters)}\n\n{question.strip()}\n\n{lines}"


def mcq_instruction(letters: str) -> str:
    """The answer-line instruction alone, for a question whose options are already lettered in its text."""
    return _MCQ_INSTRUCTION.format(letters=letters)


def livecodebench_prompt(question: str, starter_code: str) -> str:
    """LiveCodeBench's prompt; its system sentence opens the user message, since the system slot holds the
    model's own system prompt."""
    fmt = _LCB_STARTER.format(starter=starter_code.rstrip()) if starter_code.strip() else _LCB_STDIN
    return f"{_LCB_SYSTEM}\n\n### Question:\n{question.strip()}\n\n{fmt}{_LCB_ANSWER}"


def humaneval_prompt(stub: str) -> str:
    return f"{_HUMANEVAL_INSTRUCTION}\n\n```python\n{stub.rstrip()}\n```"


def is_qwq(model_name: str) -> bool:
    """A QwQ checkpoint by its name or path (qwq, qwq:32b-preview, Qwen/QwQ-32B-Preview, QwQ-32B-Q4_K_M.gguf)."""
    return "qwq" in model_name.lower()


def system_prompt(model_name: str, override: str | None = None) -> str | None:
    """The system message of every prompt: the one asked for (an empty string: none), QwQ's own for a QwQ
    model, else None, which leaves the checkpoint template's default in place."""
    if override is not None:
        return override or None
    return QWQ_SYSTEM_PROMPT if is_qwq(model_name) else None


def messages(user: str, system: str | None) -> list[dict[str, str]]:
    head = [{"role": "system", "content": system}] if system else []
    return [*head, {"role": "user", "content": user}]
