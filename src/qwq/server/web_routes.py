"""The web chat page: its static files at `/` and the one route it needs beyond the OpenAI API, markdown
rendering (done here so the page loads no script libraries)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.staticfiles import StaticFiles
from pydantic import Field

from qwq.server.markdown import render_markdown
from qwq.server.protocol import RequestBody

STATIC_DIR = Path(__file__).parent / "static"

router = APIRouter()


MAX_RENDER_CHARS = 1 << 20  # a reply far longer than any context holds; rendering is linear up to it


class RenderRequest(RequestBody):
    text: str = Field(description="markdown with TeX math, as the model wrote it", max_length=MAX_RENDER_CHARS)


@router.post("/ui/render")
def render(request: RenderRequest) -> dict[str, str]:
    return {"html": render_markdown(request.text)}


def static_files() -> StaticFiles:
    """The page itself; mounted last, at `/`, so every API route is matched first."""
    return StaticFiles(directory=STATIC_DIR, html=True)
