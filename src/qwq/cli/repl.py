"""The interactive chat of `qwq run MODEL`, as ollama's: streamed replies with the reasoning shown apart,
`/set` (parameters, system, think | nothink, format json | noformat), `/show`, `/save` and `/load`
(conversations), `/clear`, `/bye`, `\"\"\"` multi-line input, history with the arrow keys (readline),
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

from qwq.api import Model
from qwq.cli import conversations
from qwq.cli.info import format_rows, info_rows, parameter_rows
from qwq.cli.render import ReplyPrinter, finish_note, print_stats
from qwq.engine.request import GenerationParams
from qwq.engine.structured import StructuredOutput
from qwq.errors import InvalidRequestError, QwqError
from qwq.paths import qwq_home
from qwq.reasoning.guard_protocol import Guard

HELP = """Available commands:
  /set parameter NAME VALUE   set a sampling parameter or a reasoning control (/set parameter shows the names):
                              think_budget N, min_think N, answer_budget N, loop recover|stop|off,
                              language_guard off|warn|enforce, language CODE
  /set system "TEXT"          set the system message
  /set think | nothink        show the reasoning apart from the answer (the default), or only the answer
  /set format json | noformat answers as one JSON object (enforced token by token), or free text
  /set verbose | quiet        show or hide statistics after each answer
  /show info | parameters | system | template
  /save NAME | /load NAME     keep the conversation under a name ($QWQ_HOME/conversations), or go back to one
  /clear                      forget the conversation so far
  /bye                        exit (also Ctrl+D)
  /?                          this help
Use \"\"\" to begin and end a multi-line message. Ctrl+C stops an answer."""

# ollama's parameter names -> (the request field, type)
PARAMETERS: dict[str, tuple[str, type]] = {
    "temperature": ("temperature", float),
    "top_p": ("top_p", float),
    "top_k": ("top_k", int),
    "min_p": ("min_p", float),
    "repeat_penalty": ("repetition_penalty", float),
    "presence_penalty": ("presence_penalty", float),
    "frequency_penalty": ("frequency_penalty", float),
    "seed": ("seed", int),
    "num_predict": ("max_tokens", int),
    "num_ctx": ("context_length", int),
    "stop": ("stop", str),
}
# the reasoning controls' names in /set parameter -> (the ReasoningParams field, type); "none" clears a budget
CONTROLS: dict[str, tuple[str, type]] = {
    "think_budget": ("max_thinking_tokens", int),
    "min_think": ("min_thinking_tokens", int),
    "answer_budget": ("max_answer_tokens", int),
    "loop": ("loop", str),
    "language_guard": ("mode", str),
    "language": ("language", str),
    "language_scope": ("scope", str),
}


@dataclass
class ChatSettings:
    """Per-request options the user can change during the session (load-time options are fixed)."""

    params: GenerationParams = field(default_factory=GenerationParams)
    system: str | None = None
    verbose: bool = False
    hide_reasoning: bool = False
    guard: Guard | None = None


@dataclass
class ChatSession:
    model: Model
    settings: ChatSettings
    load_seconds: float
    messages: list[dict[str, str]] = field(default_factory=list)

    def conversation(self) -> list[dict[str, str]]:
        system = [{"role": "system", "content": self.settings.system}] if self.settings.system else []
        return system + self.messages

    def set_parameter(self, name: str, raw: str) -> str:
        """Apply `/set parameter NAME VALUE` (the REPL's translation into the request type); raise
        InvalidRequestError naming the problem, now rather than at the next answer."""
        if name in CONTROLS:
            return self._set_control(name, raw)
        if name not in PARAMETERS:
            known = ", ".join([*PARAMETERS, *CONTROLS])
            raise InvalidRequestError(f"unknown parameter {name!r}; known: {known}")
        key, kind = PARAMETERS[name]
        try:
            value = kind(raw)
        except ValueError:
            raise InvalidRequestError(f"{name} must be {kind.__name__}, got {raw!r}") from None
        params = self.settings.params
        if key == "context_length" and value > self.model.context_length:
            raise InvalidRequestError(
                f"num_ctx must be between 1 and the loaded context of {self.model.context_length} "
                f"(load with a larger --ctx), got {value}"
            )
        if key == "max_tokens" and value == -1:
            self.settings.params = replace(params, max_tokens=None)
        elif key == "max_tokens" and value < 1:
            raise InvalidRequestError(f"num_predict must be a positive integer or -1 (no limit), got {value}")
        elif key == "stop":
            self.settings.params = replace(params, stop=(*params.stop, value))
        else:
            try:
                self.settings.params = replace(params, **{key: value})
            except InvalidRequestError as exc:
                raise InvalidRequestError(str(exc).replace(key, name, 1)) from None
        return f"Set parameter '{name}' to '{raw}'"

    def _set_control(self, name: str, raw: str) -> str:
        key, kind = CONTROLS[name]
        value: object = None
        if raw.lower() != "none":
            try:
                value = kind(raw)
            except ValueError:
                raise InvalidRequestError(f"{name} must be {kind.__name__} or none, got {raw!r}") from None
        reasoning = self.settings.params.reasoning
        try:
            if key in ("mode", "scope"):
                value = value or {"mode": "off", "scope": "both"}[key]
            if key in ("mode", "language", "scope"):
                reasoning = replace(reasoning, language=replace(reasoning.language, **{key: value}))
            else:
                reasoning = replace(reasoning, **{key: value})
        except InvalidRequestError as exc:
            raise InvalidRequestError(str(exc).replace(exc.field or key, name)) from None
        self.settings.params = replace(self.settings.params, reasoning=reasoning)
        return f"Set parameter '{name}' to '{raw}'"

    def answer(self, text: str) -> None:
        """Send one user message and stream the reply; Ctrl+C stops it and leaves the history as it was."""
        self.messages.append({"role": "user", "content": text})
        settings = self.settings
        started = time.perf_counter()
        try:
            request = self.model.chat_request(self.conversation(), settings.params, guard=settings.guard)
            completion = self.model.complete(request)
            printer = ReplyPrinter(sys.stdout, None if settings.hide_reasoning else sys.stdout, True, sys.stdout)
            reply = printer.stream(completion)
        except KeyboardInterrupt:
            self.messages.pop()
            print("\n(answer stopped)", flush=True)
            return
        except QwqError:
            self.messages.pop()
            raise
        if reply.finish_reason == "error":
            self.messages.pop()
        else:
            self.messages.append({"role": "assistant", "content": reply.text})
        if (note := finish_note(reply)) is not None:
            print(note)
        if settings.verbose:
            print_stats(reply.stats, time.perf_counter() - started, self.load_seconds, sys.stdout, reply.finish_reason)
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
        elif head in ("/save", "/load") and len(args) == 1:
            print(self._save(args[0]) if head == "/save" else self._load(args[0]))
        elif head in ("/save", "/load"):
            raise InvalidRequestError(f"usage: {head} NAME")
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
        if args in (["think"], ["nothink"]):
            self.settings.hide_reasoning = args == ["nothink"]
            return f"Set '{args[0]}' mode."
        if args in (["format", "json"], ["noformat"]):
            structured = StructuredOutput("json_object") if args[0] == "format" else None
            self.settings.params = replace(self.settings.params, structured=structured)
            return "Set format to 'json' mode." if structured else "Disabled format."
        raise InvalidRequestError(
            'usage: /set parameter NAME VALUE | /set system "TEXT" | /set think | nothink | /set format json | '
            "noformat | /set verbose | quiet"
        )

    def _save(self, name: str) -> str:
        path = conversations.save(name, conversations.Conversation(list(self.messages), self.settings.system))
        return f"Saved conversation '{name}' ({len(self.messages)} messages) to {path}"

    def _load(self, name: str) -> str:
        saved = conversations.load(name)
        self.messages = list(saved.messages)
        self.settings.system = saved.system
        return f"Loaded conversation '{name}' ({len(saved.messages)} messages)"

    def _show(self, args: list[str]) -> str:
        model = self.model
        if args == ["info"]:
            return format_rows("Model", info_rows(model))
        if args == ["parameters"]:
            params = self.settings.params
            chosen = {
                k: getattr(params, k)
                for k in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")
                if getattr(params, k) is not None
            }
            defaults = replace(model.generation_defaults, **chosen)
            reasoning = params.reasoning
            session_rows = [
                ("seed", str(params.seed)),
                ("think_budget", str(reasoning.max_thinking_tokens)),
                ("min_think", str(reasoning.min_thinking_tokens)),
                ("answer_budget", str(reasoning.max_answer_tokens)),
                ("loop", reasoning.loop or ("recover" if model.reasoning.reasons else "off")),
                ("language_guard", reasoning.language.mode),
                ("num_predict", str(params.max_tokens or -1)),
                ("num_ctx", str(params.context_length or model.context_length)),
                *(("stop", repr(stop)) for stop in params.stop),
            ]
            return format_rows("Parameters", parameter_rows(defaults) + session_rows)
        if args == ["system"]:
            return self.settings.system or "No system message was specified."
        if args == ["template"]:
            return model.tokenizer.chat_template or "This model has no chat template."
        raise InvalidRequestError("usage: /show info | parameters | system | template")


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
