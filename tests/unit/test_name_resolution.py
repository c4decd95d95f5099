"""Model names are read in one documented order (qwq.store): a name written as a path is that path, a store
name wins over a folder of the same name in the working directory, any other existing path is itself, and
each error says which rule it applied."""

from __future__ import annotations

import pytest

from qwq.errors import ModelLoadError
from qwq.local_models import LOCAL_MODELS
from qwq.store import resolve

NAME = "qwen2.5-coder:0.5b"


@pytest.fixture
def here(tmp_path, monkeypatch, gguf_path):
    """A working directory holding a folder named like the store's model, with the real store beside it."""
    monkeypatch.setenv("QWQ_HOME", str(gguf_path.parent.parent))
    monkeypatch.chdir(tmp_path)
    (tmp_path / NAME).mkdir()
    (tmp_path / "my-checkpoint").mkdir()
    return tmp_path


def test_a_store_name_wins_over_a_folder_of_that_name(here, gguf_path):
    assert resolve(NAME) == gguf_path
    assert gguf_path.name == LOCAL_MODELS[NAME].filename


def test_a_name_written_as_a_path_is_that_path(here):
    assert resolve(f"./{NAME}").resolve() == here / NAME
    assert resolve(str(here / NAME)) == here / NAME


def test_any_other_existing_folder_is_itself(here):
    assert resolve("my-checkpoint").resolve() == here / "my-checkpoint"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("./missing", "read as a path, as it is written"),
        ("missing.gguf", "read as a path, as it is written"),
        ("missing/folder", "no such file or directory, and not a model name"),
        ("nope:1b", "unknown model 'nope:1b': not a file or directory, nor a known name"),
    ],
)
def test_each_error_says_which_rule_applied(here, name, message):
    with pytest.raises(ModelLoadError, match=message):
        resolve(name)
