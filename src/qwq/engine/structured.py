"""What a request asks its answer to be: any JSON object, or JSON that validates against a JSON schema (OpenAI's
`response_format`, Ollama's `format`). The schema is compiled to an llguidance grammar when the params are built,
so a schema it cannot enforce fails the request before anything is queued; grammar.py enforces it while decoding.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from llguidance import LLMatcher

from qwq.errors import InvalidRequestError

STRUCTURED_KINDS = ("json_object", "json_schema")
TYPE_FIELD = "response_format.type"
SCHEMA_FIELD = "response_format.json_schema.schema"
# the separators json.dumps writes, and no free whitespace: a small model cannot pad its answer with blank lines
# until the budget runs out, and the answer reads as models write JSON anyway
JSON_OPTIONS = {"item_separator": ", ", "key_separator": ": ", "whitespace_flexible": False}


@dataclass(frozen=True)
class StructuredOutput:
    """kind "json_object": the answer is one JSON object; "json_schema": one JSON value valid under `schema`."""

    kind: str
    schema: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.kind not in STRUCTURED_KINDS:
            raise InvalidRequestError(
                f"{TYPE_FIELD} must be one of text, {', '.join(STRUCTURED_KINDS)}; got {self.kind!r}", field=TYPE_FIELD
            )
        if self.kind == "json_schema" and not isinstance(self.schema, dict):
            raise InvalidRequestError(
                f"{SCHEMA_FIELD} must be a JSON schema object, got {self.schema!r}", field=SCHEMA_FIELD
            )
        if self.kind == "json_object" and self.schema is not None:
            raise InvalidRequestError("a json_object response format takes no schema", field=SCHEMA_FIELD)
        try:
            error = LLMatcher.validate_grammar(self.grammar)
        except ValueError as exc:  # a schema json.dumps cannot write (a set, a NaN)
            error = str(exc)
        if error:
            raise InvalidRequestError(f"{SCHEMA_FIELD} cannot be enforced: {error}", field=SCHEMA_FIELD)

    @cached_property
    def grammar(self) -> str:
        """The llguidance grammar (its JSON form) the answer must match."""
        schema = self.schema if self.kind == "json_schema" else {"type": "object"}
        return LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)

    @classmethod
    def from_response_format(cls, value: Mapping[str, Any] | None) -> StructuredOutput | None:
        """OpenAI's `response_format` object as a plain dict (the Python API's keyword): None for "text"."""
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise InvalidRequestError(f"response_format must be an object, got {value!r}", field="response_format")
        kind = value.get("type")
        if kind == "text":
            return None
        if kind != "json_schema":
            return cls(kind)
        spec = value.get("json_schema")
        return cls(kind, spec.get("schema") if isinstance(spec, Mapping) else None)
