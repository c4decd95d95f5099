"""How long a model stays loaded after its last request, read as ollama reads `keep_alive` and
OLLAMA_KEEP_ALIVE: a number of seconds or a Go-style duration ("5m", "1h30m", "300ms"); 0 unloads at once,
any negative value keeps the model loaded for good."""

from __future__ import annotations

import math
import re

from qwq.errors import InvalidRequestError

FOREVER: float = math.inf
DEFAULT_KEEP_ALIVE = "5m"  # ollama's default
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def keep_alive_seconds(value: str | float | int, name: str = "keep_alive") -> float:
    """Seconds to stay loaded (FOREVER for a negative value), or InvalidRequestError naming `name`."""
    if isinstance(value, bool):
        message = f'{name} must be a duration such as "5m" or a number of seconds, got {value}'
        raise InvalidRequestError(message, field=name)
    seconds = float(value) if isinstance(value, int | float) else _parse(value.strip(), name)
    if math.isnan(seconds):
        raise InvalidRequestError(f"{name} must be a number of seconds, got {value!r}", field=name)
    return FOREVER if seconds < 0 else seconds


def _parse(text: str, name: str) -> float:
    try:
        return float(text)  # a bare number: seconds, as OLLAMA_KEEP_ALIVE takes it
    except ValueError:
        pass
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    if not body or _PART.sub("", body):
        raise InvalidRequestError(
            f'{name}: {text!r} is not a duration (write "5m", "1h30m", "90s", a number of seconds, or -1 for forever)',
            field=name,
        )
    return sign * sum(float(number) * _UNITS[unit] for number, unit in _PART.findall(body))
