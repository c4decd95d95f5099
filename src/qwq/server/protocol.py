"""The base of every request body the server reads: strict types (no `true` for a number, no `"8"` for an
integer, no `"yes"` for a boolean; an integer is still a number), and fields it does not know ignored, as
the OpenAI and Ollama servers ignore them."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class RequestBody(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
