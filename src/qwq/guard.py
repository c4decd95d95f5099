"""Safety guards for serving: `load_guard(spec)` turns `qwq serve --guard FILE|MODEL` into a Guard.

A `.toml` file is a policy of regexes and keywords (guard_policy.py documents the format); anything else names
a guard checkpoint for `qwq.load`, run by qwq itself (guard_model.py: Llama Guard 3, Qwen3Guard-Gen).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qwq.guard_model import ModelGuard
from qwq.reasoning.guard_policy import PolicyGuard
from qwq.reasoning.guard_protocol import Guard, ReplyChecker, Verdict, WholeReplyChecker

__all__ = ["Guard", "ModelGuard", "PolicyGuard", "ReplyChecker", "Verdict", "WholeReplyChecker", "load_guard"]


def load_guard(spec: str | Path, format: str = "auto", **load_options: Any) -> Guard:
    """A PolicyGuard for a `.toml` file, else a ModelGuard on `qwq.load(spec, **load_options)` in `format`."""
    if str(spec).lower().endswith(".toml"):
        return PolicyGuard.from_file(spec)
    from qwq.api import load  # here, not at the top: qwq.api imports the engine, which may import guards

    return ModelGuard(load(spec, **load_options), format=format)
