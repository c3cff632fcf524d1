"""The serving engine: model layers and loaders, paged KV cache with prefix caching,
continuous-batching scheduler, sampler, and the `LLM` (offline) and `AsyncEngine` APIs.
Knows nothing of HTTP."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from deploylab.engine.async_engine import (
        AsyncEngine,
        EngineDeadError,
        RequestFailedError,
        RequestStream,
    )
    from deploylab.engine.config import EngineConfig
    from deploylab.engine.llm import LLM
    from deploylab.engine.llm_engine import LLMEngine
    from deploylab.engine.outputs import EngineStats, RequestDelta, RequestOutput, TokenLogprobs
    from deploylab.engine.sampling_params import SamplingParams

# Public name -> defining module; imported on first use so `import deploylab.engine` is cheap.
_EXPORTS = {
    "AsyncEngine": "deploylab.engine.async_engine",
    "EngineDeadError": "deploylab.engine.async_engine",
    "RequestFailedError": "deploylab.engine.async_engine",
    "RequestStream": "deploylab.engine.async_engine",
    "EngineConfig": "deploylab.engine.config",
    "LLM": "deploylab.engine.llm",
    "LLMEngine": "deploylab.engine.llm_engine",
    "EngineStats": "deploylab.engine.outputs",
    "RequestDelta": "deploylab.engine.outputs",
    "RequestOutput": "deploylab.engine.outputs",
    "TokenLogprobs": "deploylab.engine.outputs",
    "SamplingParams": "deploylab.engine.sampling_params",
}

__all__ = [
    "LLM",
    "AsyncEngine",
    "EngineConfig",
    "EngineDeadError",
    "EngineStats",
    "LLMEngine",
    "RequestDelta",
    "RequestFailedError",
    "RequestOutput",
    "RequestStream",
    "SamplingParams",
    "TokenLogprobs",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'deploylab.engine' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
