"""Fault injection shared by the engine and server tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def fail_first_call(fn: Callable[..., Any], exc: BaseException) -> Callable[..., Any]:
    """`fn`, except that its first call raises `exc` (a one-off device or kernel error)."""
    calls = 0

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise exc
        return fn(*args, **kwargs)

    return wrapper
