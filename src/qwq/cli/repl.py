"""The interactive chat of `qwq run MODEL`, as ollama's: streamed replies with the reasoning shown apart,
`/set`, `/show`, `/clear`, `/bye`, `\"\"\"` multi-line input, history with the arrow keys (readline),
Ctrl+C to stop an answer and keep the session, Ctrl+D to leave.
"""

from __future__ import annotations

import contextlib
import shlex
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from qwq.api import Model
from qwq.cli.info import format_rows, info_rows, parameter_rows
from qwq.cli.render import ReplyPrinter, print_stats
from qwq.engine.sampling import SamplingParams
from qwq.errors import InvalidRequestError, QwqError
from qwq.local_models import qwq_home
from qwq.reasoning.parser import ReasoningSplitter

HELP = """Available commands:
  /set parameter NAME VALUE   set a sampling parameter (/set parameter shows the names)
  /set system "TEXT"          set the system message
  /set verbose | quiet        show or hide statistics after each answer
  /show info | parameters | system | template
  /clear                      forget the conversation so far
  /bye                        exit (also Ctrl+D)
  /?                          this help
Use \"\"\" to begin and end a multi-line message. Ctrl+C stops an answer."""

# ollama's parameter names -> (our option name, type)
PARAMETERS: dict[str, tuple[str, type]] = {
    "temperature": ("temperature", float),
    "top_p": ("top_p", float),
    "top_k": ("top_k", int),
    "min_p": ("min_p", float),
    "repeat_penalty": ("repetition_penalty", float),
    "presence_penalty": ("presence_penalty", float),
    "frequency_penalty": ("frequency_penalty", float),
    "seed": ("seed", int),
    "num_predict": ("max_new_tokens", int),
    "num_ctx": ("num_ctx", int),
    "stop": ("stop", str),
}


@dataclass
class ChatSettings:
    """Per-request options the user can change during the session (load-time options are fixed)."""

    sampling: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    max_new_tokens: int | None = None
    stop: list[str] = field(default_factory=list)
    system: str | None = None
    verbose: bool = False
    hide_reasoning: bool = False


@dataclass
class ChatSession:
    model: Model
    settings: ChatSettings
    reasoning_style: tuple[str, bool]
    load_seconds: float
    messages: list[dict[str, str]] = field(default_factory=list)

    def conversation(self) -> list[dict[str, str]]:
        system = [{"role": "system", "content": self.settings.system}] if self.settings.system else []
        return system + self.messages

    def set_parameter(self, name: str, raw: str) -> str:
        """Apply `/set parameter NAME VALUE`; raise InvalidRequestError naming the problem."""
        if name not in PARAMETERS:
            raise InvalidRequestError(f"unknown parameter {name!r}; known: {', '.join(PARAMETERS)}")
        key, kind = PARAMETERS[name]
        try:
            value = kind(raw)
        except ValueError:
            raise InvalidRequestError(f"{name} must be {kind.__name__}, got {raw!r}") from None
        settings = self.settings
        if key == "num_ctx":
            limit = self.model.config.max_position_embeddings
            if not 1 <= value <= limit:
                raise InvalidRequestError(f"num_ctx must be between 1 and {limit}, got {value}")
            self.model.context_length = value
        elif key == "max_new_tokens":
            if value != -1 and value < 1:
                raise InvalidRequestError(f"num_predict must be a positive integer or -1 (no limit), got {value}")
            settings.max_new_tokens = None if value == -1 else value
        elif key == "stop":
            settings.stop.append(value)
        elif key == "seed":
            settings.seed = value
        else:
            candidate = {**settings.sampling, key: value}
            SamplingParams(**candidate)  # validates the range now, not at the next answer
            settings.sampling = candidate
        return f"Set parameter '{name}' to '{raw}'"

    def answer(self, text: str) -> None:
        """Send one user message and stream the reply; Ctrl+C stops it and leaves the history as it was."""
        self.messages.append({"role": "user", "content": text})
        settings = self.settings
        started = time.perf_counter()
        try:
            stream = self.model.chat(
                self.conversation(),
                stream=True,
                max_new_tokens=settings.max_new_tokens,
                stop=settings.stop or None,
                seed=settings.seed,
                **settings.sampling,
            )
            printer = ReplyPrinter(
                sys.stdout,
                None if settings.hide_reasoning else sys.stdout,
                ReasoningSplitter(*self.reasoning_style),
                labels=True,
            )
            reply = printer.stream(stream)
        except KeyboardInterrupt:
            self.messages.pop()
            print("\n(answer stopped)", flush=True)
            return
        except QwqError:
            self.messages.pop()
            raise
        self.messages.append({"role": "assistant", "content": reply.text})
        if reply.reasoning and not reply.answer:
            print(f"(no final answer: the reply ended while reasoning, finish reason {reply.finish_reason})")
        if settings.verbose:
            print_stats(reply.stats, time.perf_counter() - started, self.load_seconds, sys.stdout)
        print(flush=True)

    def command(self, line: str) -> bool:
        """Run a slash command; False when the session should end."""
        try:
            words = shlex.split(line)
        except ValueError as exc:
            raise InvalidRequestError(f"cannot parse {line!r}: {exc}") from None
        head, args = words[0], words[1:]
        if head in ("/bye", "/exit"):
            return False
        if head in ("/?", "/help"):
            print(HELP)
        elif head == "/clear":
            self.messages.clear()
            print("Cleared session context")
        elif head == "/set":
            print(self._set(args))
        elif head == "/show":
            print(self._show(args))
        else:
            raise InvalidRequestError(f"unknown command {head!r}; type /? for help")
        return True

    def _set(self, args: list[str]) -> str:
        if args[:1] == ["parameter"]:
            if len(args) != 3:
                names = ", ".join(PARAMETERS)
                raise InvalidRequestError(f"usage: /set parameter NAME VALUE (names: {names})")
            return self.set_parameter(args[1], args[2])
        if args[:1] == ["system"] and len(args) >= 2:
            self.settings.system = " ".join(args[1:])
            return "Set system message."
        if args in (["verbose"], ["quiet"]):
            self.settings.verbose = args == ["verbose"]
            return f"Set '{args[0]}' mode."
        raise InvalidRequestError('usage: /set parameter NAME VALUE | /set system "TEXT" | /set verbose | quiet')

    def _show(self, args: list[str]) -> str:
        model = self.model
        if args == ["info"]:
            return format_rows("Model", info_rows(model))
        if args == ["parameters"]:
            defaults = replace(model.generation_defaults, **self._defaults_overrides())
            session_rows = [("seed", str(self.settings.seed)), ("num_ctx", str(model.context_length))]
            rows = parameter_rows(defaults) + session_rows
            return format_rows("Parameters", rows)
        if args == ["system"]:
            return self.settings.system or "No system message was specified."
        if args == ["template"]:
            return model.tokenizer.chat_template or "This model has no chat template."
        raise InvalidRequestError("usage: /show info | parameters | system | template")

    def _defaults_overrides(self) -> dict[str, Any]:
        known = {"temperature", "top_p", "top_k", "min_p", "repetition_penalty"}
        return {k: v for k, v in self.settings.sampling.items() if k in known}


def _read_message() -> str:
    """One user message: a line, or the lines between an opening and a closing triple quote."""
    stripped = input(">>> ").lstrip()
    if not stripped.startswith('"""'):
        return stripped
    body = stripped[3:]
    if body.rstrip().endswith('"""'):
        return body.rstrip()[:-3]
    lines = [body]
    while True:
        line = input("... ")
        if line.rstrip().endswith('"""'):
            lines.append(line.rstrip()[:-3])
            return "\n".join(lines).strip("\n")
        lines.append(line)


def _enable_history() -> Callable[[], None]:
    """Arrow-key line editing and history (GNU readline, kept in $QWQ_HOME/history); returns the saver."""
    try:
        import readline
    except ImportError:  # a Python built without readline still works, without history
        return lambda: None
    history = qwq_home() / "history"
    history.parent.mkdir(parents=True, exist_ok=True)
    if history.is_file():
        with contextlib.suppress(OSError):
            readline.read_history_file(history)
    readline.set_history_length(1000)
    return lambda: readline.write_history_file(history)


def run_chat(session: ChatSession) -> int:
    """The read-answer loop; returns the exit code."""
    # Ctrl+C stops an answer: take SIGINT back even where it was inherited ignored (a shell's background job)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    save_history = _enable_history()
    print("Type a message, /? for help, /bye or Ctrl+D to leave.", flush=True)
    while True:
        try:
            text = _read_message()
            save_history()
            if text.startswith("/"):
                if not session.command(text.strip()):
                    return 0
            elif text.strip():
                session.answer(text)  # stops the answer itself on Ctrl+C
        except KeyboardInterrupt:
            print("\nUse Ctrl + d or /bye to exit.", flush=True)
        except EOFError:
            print(flush=True)
            return 0
        except QwqError as exc:
            print(f"error: {exc}", flush=True)
