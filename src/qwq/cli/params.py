"""The sampling and reasoning-control flags of `run`, `serve` and `eval run`, defined once and added the same
way to each, and their one translation into the request type: checked before any model is looked for, an
error naming the flag as typed (`--max-tokens`, not `max_tokens`)."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from qwq.engine.request import (
    LANGUAGE_MODES,
    LANGUAGE_SCOPES,
    LOOP_ACTIONS,
    GenerationParams,
    LanguageParams,
    ReasoningParams,
)
from qwq.errors import InvalidRequestError


@dataclass(frozen=True)
class Flag:
    """A command-line flag for one field of the request type."""

    field: str  # GenerationParams' or ReasoningParams' name
    flag: str
    kind: type
    help: str
    metavar: str | None = None

    @property
    def dest(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")


SAMPLING = (
    Flag("temperature", "--temperature", float, "0 is greedy (default: the model's)"),
    Flag("top_p", "--top-p", float, "nucleus sampling: in (0, 1] (default: the model's)"),
    Flag("top_k", "--top-k", int, "sample among the K most likely tokens, 0 for all (default: the model's)"),
    Flag("min_p", "--min-p", float, "drop tokens below P times the most likely one's probability"),
    Flag("repetition_penalty", "--repeat-penalty", float, "above 1 discourages repeating (default: the model's)"),
    Flag("seed", "--seed", int, "for reproducible sampling"),
    Flag("max_tokens", "--max-tokens", int, "new tokens at most (default: until the context is full)"),
)
CONTROLS = (
    Flag("max_thinking_tokens", "--think-budget", int, "reasoning tokens at most, then the answer", "N"),
    Flag("min_thinking_tokens", "--min-think", int, "reasoning closed before N tokens continues (Wait)", "N"),
    Flag("max_answer_tokens", "--answer-budget", int, "answer tokens at most once a control cued it", "N"),
)
_NAMES = {flag.field: flag.flag for flag in (*SAMPLING, *CONTROLS)}


def add_sampling_options(
    command: argparse.ArgumentParser | argparse._ArgumentGroup,
    leave_out: Iterable[str] = (),
    helps: dict[str, str] | None = None,
) -> None:
    """The sampling flags (all but the fields in `leave_out`), with a command's own wording in `helps`."""
    for flag in SAMPLING:
        if flag.field not in leave_out:
            command.add_argument(flag.flag, type=flag.kind, help=(helps or {}).get(flag.field, flag.help))


def add_control_options(command: argparse.ArgumentParser, scope: bool = True) -> argparse._ArgumentGroup:
    """The reasoning controls (per request; the REPL changes them with /set), as a group the caller may add to."""
    group = command.add_argument_group("reasoning controls")
    for flag in CONTROLS:
        group.add_argument(flag.flag, type=flag.kind, metavar=flag.metavar, help=flag.help)
    group.add_argument(
        "--loop",
        choices=LOOP_ACTIONS,
        help="a detected loop: recover (cut it and answer; the default for reasoning models), stop, or off",
    )
    group.add_argument("--language-guard", choices=LANGUAGE_MODES, help="keep the reply to one language's script")
    group.add_argument("--language", metavar="CODE", help="the language guard's language (default: the prompt's)")
    if scope:
        group.add_argument("--language-scope", choices=LANGUAGE_SCOPES, help="reasoning, answer or both (default)")
    return group


def sampling_values(args: argparse.Namespace) -> dict[str, Any]:
    """The request type's fields from the sampling flags the command has (None where not given)."""
    return {flag.field: getattr(args, flag.dest) for flag in SAMPLING if hasattr(args, flag.dest)}


def params_from(args: argparse.Namespace) -> GenerationParams:
    """The flags as the one request type, checked now (before any model loads); a bad value is named by its
    flag."""
    try:
        reasoning = None
        if hasattr(args, "loop"):
            language = LanguageParams(
                mode=args.language_guard or "off",
                language=args.language,
                scope=getattr(args, "language_scope", None) or "both",
            )
            controls = {flag.field: getattr(args, flag.dest) for flag in CONTROLS}
            reasoning = ReasoningParams().merged(loop=args.loop, language=language, **controls)
        return GenerationParams.of(**sampling_values(args), reasoning=reasoning)
    except InvalidRequestError as exc:
        raise _renamed(exc) from None


def _renamed(exc: InvalidRequestError) -> InvalidRequestError:
    message = str(exc)
    for field, flag in _NAMES.items():
        message = re.sub(rf"(?<![\w-]){field}(?!\w)", flag, message)
    return InvalidRequestError(message, field=_NAMES.get(exc.field or "", exc.field))
