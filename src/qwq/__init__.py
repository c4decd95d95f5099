"""qwq: run, serve and evaluate QwQ-style reasoning models (Qwen2 architecture) on CPU and GPU."""

from qwq.api import Model, load
from qwq.config import GenerationDefaults, ModelConfig
from qwq.engine.output import Completion
from qwq.engine.request import GenerationParams
from qwq.errors import ContextLengthError, InvalidRequestError, ModelLoadError, QwqError, UnsupportedModelError
from qwq.presets import QWQ_SYSTEM_PROMPT

__version__ = "0.1.0"

__all__ = [
    "QWQ_SYSTEM_PROMPT",
    "Completion",
    "ContextLengthError",
    "GenerationDefaults",
    "GenerationParams",
    "InvalidRequestError",
    "Model",
    "ModelConfig",
    "ModelLoadError",
    "QwqError",
    "UnsupportedModelError",
    "load",
]
