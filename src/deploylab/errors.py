"""User-facing errors: each says what was wrong and what to do about it.

The CLI prints the message of a `DeploylabError` without a traceback (unless `--debug`) and
exits with its `exit_code`: 2 for bad usage, 1 for a failure at run time.
"""

from __future__ import annotations


class DeploylabError(Exception):
    """Base of every error a user can cause; the message is shown as is."""

    exit_code: int = 1


class UsageError(DeploylabError):
    """The command line or a config file asks for something invalid."""

    exit_code = 2


class ConfigError(UsageError):
    """A config or scenario file is malformed; the message names the file and line."""


class ModelNotFoundError(DeploylabError):
    """A model name or path that does not resolve to a local model."""


class ModelLoadError(DeploylabError):
    """A model file exists but cannot be loaded (corrupt, truncated, unsupported)."""


class UnsupportedArchitectureError(ModelLoadError):
    """A model config names an architecture the engine does not implement."""


class InvalidRequestError(DeploylabError):
    """A generation request with invalid parameters (bad sampling values, empty prompt...)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class PromptTooLongError(InvalidRequestError):
    """A prompt that does not fit the model's context."""


class EngineOverloadedError(DeploylabError):
    """The engine's waiting queue is full; retry later."""


class TargetUnreachableError(DeploylabError):
    """A load-test target that does not answer."""


class UserCodeError(DeploylabError):
    """An exception raised by user code (e.g. a dataset or training step), with its traceback."""

    def __init__(self, message: str, user_traceback: str = "") -> None:
        super().__init__(message)
        self.user_traceback = user_traceback
