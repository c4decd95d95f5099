"""The structured-output request fields of both dialects, translated into the one StructuredOutput: OpenAI's
`response_format` ({"type": "text" | "json_object" | "json_schema", "json_schema": {"name", "schema", "strict"}})
and Ollama's `format` ("json" or a JSON schema). The answer is then held to it by grammar-constrained decoding,
`strict` or not."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from qwq.engine.structured import SCHEMA_FIELD, TYPE_FIELD, StructuredOutput
from qwq.server.protocol import RequestBody

# the one request type's structured-output fields under Ollama's name (errors say what the client sent)
OLLAMA_FORMAT_NAMES = {SCHEMA_FIELD: "format", TYPE_FIELD: "format"}

OllamaFormat = Literal["", "json"] | dict[str, Any] | None


class JsonSchemaFormat(RequestBody):
    name: str = "response"
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(RequestBody):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    def structured(self) -> StructuredOutput | None:
        if self.type == "text":
            return None
        if self.type == "json_object":
            return StructuredOutput("json_object")
        return StructuredOutput("json_schema", self.json_schema.schema_ if self.json_schema else None)


def ollama_structured(value: OllamaFormat) -> StructuredOutput | None:
    """Ollama's `format`: "json" for any JSON object, a schema object for JSON valid under it, "" for none."""
    if not value:
        return None
    return StructuredOutput("json_object") if value == "json" else StructuredOutput("json_schema", value)
