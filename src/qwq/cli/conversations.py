"""The REPL's saved conversations (`/save NAME`, `/load NAME`): one JSON file per name under
`$QWQ_HOME/conversations`, holding the messages and the system message."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from qwq.errors import InvalidRequestError
from qwq.paths import qwq_home

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class Conversation:
    messages: list[dict[str, str]]
    system: str | None = None


def _path(name: str) -> Path:
    if not _NAME.fullmatch(name):
        raise InvalidRequestError(
            f"{name!r} is not a conversation name: use letters, digits, '.', '_' or '-' (64 at most)"
        )
    return qwq_home() / "conversations" / f"{name}.json"


def saved_names() -> list[str]:
    folder = qwq_home() / "conversations"
    return sorted(path.stem for path in folder.glob("*.json")) if folder.is_dir() else []


def save(name: str, conversation: Conversation) -> Path:
    path = _path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"system": conversation.system, "messages": conversation.messages}
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(body, ensure_ascii=False, indent=1), encoding="utf-8")
    partial.replace(path)  # a crash mid-write never leaves half a conversation under the name
    return path


def load(name: str) -> Conversation:
    path = _path(name)
    if not path.is_file():
        known = ", ".join(saved_names()) or "none yet"
        raise InvalidRequestError(f"no conversation named {name!r} (saved: {known}); /save NAME keeps one")
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
        messages = [{"role": str(m["role"]), "content": str(m["content"])} for m in body["messages"]]
        system = body.get("system")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InvalidRequestError(f"{path}: not a saved conversation ({type(exc).__name__}: {exc})") from None
    return Conversation(messages, system if isinstance(system, str) else None)
