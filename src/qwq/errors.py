"""The project's exceptions: one base class, so callers can catch everything qwq raises on bad input.

Each subclass carries the HTTP status a server should answer with, kept here in one place.
"""

from __future__ import annotations


class QwqError(Exception):
    """Base of every error qwq raises about its input; the message names the file, field or value, and
    `field` (when given) is the request field at fault, for an API's error object."""

    http_status: int = 500
    code: str | None = None  # a machine-readable code for an API's error object

    def __init__(self, message: str = "", field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class ModelLoadError(QwqError):
    """A checkpoint could not be read: missing, truncated, corrupt, unsupported or inconsistent."""

    http_status = 400


class UnsupportedModelError(ModelLoadError):
    """A readable checkpoint of an architecture or feature qwq does not implement."""


class ContextLengthError(QwqError):
    """The prompt plus the requested new tokens do not fit in the model's context window."""

    http_status = 400


class InvalidRequestError(QwqError):
    """A generation or chat request with a value out of range or of the wrong kind."""

    http_status = 400


class DownloadError(QwqError):
    """A model could not be fetched or failed its integrity check."""

    http_status = 502


class InsufficientMemoryError(QwqError):
    """A model would not fit in the memory available, found before any weight is read."""

    http_status = 507


class ServerBusyError(QwqError):
    """The server's waiting line is full; the client should retry later."""

    http_status = 503


class ModelNotFoundError(QwqError):
    """A request named a model this server does not run."""

    http_status = 404


class GenerationError(QwqError):
    """Generation failed inside the engine for one request (the others go on); it ends with reason 'error'."""

    http_status = 500


class ContentFilterError(QwqError):
    """The safety guard blocked a prompt: the request is refused (OpenAI's `content_filter` code)."""

    http_status = 400
    code = "content_filter"


class ModelUnavailableError(QwqError):
    """A model this server serves could not be loaded for a request (the load's error named); the other
    models go on serving."""

    http_status = 503
