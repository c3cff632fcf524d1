"""Running user code (datasets, transforms, training steps) so its failures read as the user's."""

from __future__ import annotations

import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from deploylab.errors import UserCodeError

T = TypeVar("T")

_OUR_DIR = str(Path(__file__).resolve().parent.parent)
_WORKER_MARK = "Original Traceback (most recent call last)"


def user_traceback(exc: BaseException) -> str:
    """The traceback of `exc` without deploylab's own frames, so the user's code stands out."""
    frames = [
        frame
        for frame in traceback.extract_tb(exc.__traceback__)
        if not str(Path(frame.filename).resolve()).startswith(_OUR_DIR)
    ]
    lines = ["Traceback (most recent call last):\n"]
    lines += traceback.format_list(frames)
    lines += traceback.format_exception_only(type(exc), exc)
    return "".join(lines).rstrip() + "\n"


@contextmanager
def user_code(what: str) -> Iterator[None]:
    """Turn any exception raised inside into a `UserCodeError` naming `what` failed.

    `KeyboardInterrupt` and `SystemExit` pass through untouched.
    """
    try:
        yield
    except Exception as exc:
        lines = [line for line in str(exc).strip().splitlines() if line.strip()]
        if _WORKER_MARK in str(exc):
            # A DataLoader worker's error: torch puts the original traceback in the message,
            # whose last line is the original "Type: message".
            what, detail = f"{what} (in a DataLoader worker process)", lines[-1]
        else:
            detail = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
        message = (
            f"{what} raised {detail}\n"
            "The error comes from your code, not from deploylab; see the traceback."
        )
        raise UserCodeError(message, user_traceback(exc)) from exc


def call_user(what: str, fn: Callable[[], T]) -> T:
    """Call `fn()` inside `user_code(what)`."""
    with user_code(what):
        return fn()
