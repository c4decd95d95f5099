"""Where qwq keeps its files: models, kernel builds, the chat history."""

from __future__ import annotations

import os
from pathlib import Path


def qwq_home() -> Path:
    """Where qwq keeps models: $QWQ_HOME, else $XDG_CACHE_HOME/qwq, else ~/.cache/qwq."""
    if os.environ.get("QWQ_HOME"):
        return Path(os.environ["QWQ_HOME"])
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "qwq"
