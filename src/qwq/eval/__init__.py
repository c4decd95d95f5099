"""The evaluation harness: benchmarks, runs and graders (`extract_answer`, `grade`)."""

from qwq.eval.grading import extract_answer, grade

__all__ = ["extract_answer", "grade"]
