"""The names `qwq serve` answers to: the models given at start (store names, or local files and folders
named by their stem), then every model pulled into the store (read afresh, so a pull or a delete shows at
once). A name the server does not serve is a 404 that says what it does serve, or how to pull it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from qwq.errors import ModelLoadError, ModelNotFoundError
from qwq.store import ALIASES, CatalogEntry, list_pulled, lookup, resolve, written_as_path


@dataclass(frozen=True)
class ServedModel:
    """One servable model: the name clients use, what `qwq.load` reads (a store name or a path), and the
    other names that reach it."""

    name: str
    source: str
    aliases: tuple[str, ...] = ()
    pulled: bool = False  # a store model (which `/api/delete` may remove), not a file given at start

    def answers_to(self, name: str) -> bool:
        return name == self.name or name in self.aliases

    @property
    def path(self) -> Path:
        """Its files on disk: a .gguf file or a checkpoint folder."""
        entry = lookup(self.source) if self.pulled else None
        return entry.path if entry is not None else Path(self.source)


def _store_model(entry: CatalogEntry) -> ServedModel:
    aliases = tuple(alias for alias, name in ALIASES.items() if name == entry.name)
    tagless = () if ":" in entry.name else (f"{entry.name}:latest",)
    return ServedModel(entry.name, entry.name, aliases + tagless, pulled=True)


def given_model(argument: str) -> ServedModel:
    """A model named on the command line, read by the store's resolution order: a store name (pulled now
    if it is not yet, as `qwq run` does), else a path (a .gguf file named by its stem)."""
    entry = None if written_as_path(argument) else lookup(argument)
    if entry is not None:
        resolve(argument)
        served = _store_model(entry)
        return ServedModel(served.name, served.source, tuple({*served.aliases, argument} - {served.name}), True)
    path = resolve(argument)
    name = path.stem if path.suffix == ".gguf" else argument
    aliases = {argument, *(() if ":" in name else (f"{name}:latest",))} - {name}
    return ServedModel(name, str(path), tuple(sorted(aliases)))


class ModelCatalog:
    """The servable models, those given at start first (the web page picks the first)."""

    def __init__(self, given: Sequence[ServedModel], include_store: bool = True) -> None:
        self.given = list(given)
        self.include_store = include_store

    def served(self) -> list[ServedModel]:
        names = {model.name for model in self.given}
        pulled = list_pulled() if self.include_store else []
        return self.given + [_store_model(lookup(m.name)) for m in pulled if m.name not in names]

    def find(self, name: str) -> ServedModel:
        """The model `name` reaches, or ModelNotFoundError saying what is served (or how to pull it)."""
        for model in self.given:
            if model.answers_to(name):
                return model
        try:
            entry = lookup(name) if self.include_store and name else None
        except ModelLoadError:
            entry = None
        if entry is not None and entry.pulled:
            return _store_model(entry)
        if entry is not None:
            raise ModelNotFoundError(
                f"model {name!r} is not pulled: POST /api/pull (or `qwq pull {entry.name}`) fetches it", field="model"
            )
        served = ", ".join(repr(model.name) for model in self.served()) or "none yet"
        raise ModelNotFoundError(
            f"model {name!r} not found; this server serves {served} (GET /v1/models or /api/tags lists them)",
            field="model",
        )
