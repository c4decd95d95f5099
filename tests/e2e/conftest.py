"""The `qwq serve` processes that e2e modules share: loading the 0.5B takes a server most of its start-up, so
each flag set is started once for the package rather than once per module. A test must leave a shared server
as it found it: every request it makes ends (or is cancelled) before it returns."""

from __future__ import annotations

import pytest

from cli_process import SHARED_CONTEXT, SHARED_MAX_BATCH, SHARED_MAX_QUEUE, WEB_CONTEXT, WEB_KEY, live_server

MODEL = "qwen2.5-coder:0.5b"


@pytest.fixture(scope="package")
def plain_server(gguf_path) -> str:
    """The 0.5B with plain flags and no key: the base URL."""
    arguments = ("--ctx", str(SHARED_CONTEXT), "--max-batch", str(SHARED_MAX_BATCH))
    with live_server(MODEL, *arguments, "--max-queue", str(SHARED_MAX_QUEUE), home=gguf_path.parent.parent) as url:
        yield url


@pytest.fixture(scope="package")
def web_server(gguf_path) -> str:
    """The 0.5B read as QwQ-Preview (its reply is reasoning until a `**Final Answer**` heading), behind a bearer
    key: the base URL. Dequantized to float32: the page's tests ask for replies whose greedy text (a `**Final
    Answer**` heading, LaTeX in the answer) was read off the float32 model's."""
    arguments = ("--ctx", str(WEB_CONTEXT), "--dtype", "float32", "--reasoning-format", "qwq-preview")
    arguments += ("--api-key", WEB_KEY)
    with live_server(MODEL, *arguments, home=gguf_path.parent.parent) as url:
        yield url
