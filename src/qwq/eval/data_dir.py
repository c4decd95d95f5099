"""Where benchmark data files are looked for before the Hub is asked: `--data-dir`, then $QWQ_EVAL_DATA, then
`shared/data` beside or above the working directory (a checkout's layout), then qwq's own `eval-data` folder.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from qwq.paths import qwq_home

ENVIRONMENT = "QWQ_EVAL_DATA"


def search_dirs(explicit: Path | None = None) -> list[Path]:
    """The folders searched, in order (flag > environment > defaults)."""
    dirs = [explicit] if explicit is not None else []
    if os.environ.get(ENVIRONMENT):
        dirs.append(Path(os.environ[ENVIRONMENT]))
    cwd = Path.cwd()
    dirs += [cwd / "shared" / "data", cwd.parent / "shared" / "data", qwq_home() / "eval-data"]
    return [d.expanduser() for d in dirs]


def find_data_file(names: Sequence[str], explicit: Path | None = None) -> Path | None:
    """The first of `names` found in the first folder that has one, or None."""
    for folder in search_dirs(explicit):
        for name in names:
            if (folder / name).is_file():
                return folder / name
    return None
