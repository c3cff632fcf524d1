"""Tensor parallelism: one process per device, gloo on the CPU and NCCL on CUDA.

`TensorParallel` (rank 0, inside `LLMEngine`) starts the workers, `ShardPlan` says which
heads, MLP columns and vocabulary rows a rank holds, `layers` has the parallel modules.
The executor is imported lazily: `llm_engine` imports this package, and the executor needs
`async_engine`, which imports `llm_engine`.
"""

from __future__ import annotations

from typing import Any

from deploylab.engine.distributed.plan import ShardPlan, check_tensor_parallel

_LAZY = {"TensorParallel", "TensorParallelError", "TPModelRunner"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from deploylab.engine.distributed import executor

        return getattr(executor, name)
    raise AttributeError(name)


__all__ = [
    "ShardPlan",
    "TPModelRunner",
    "TensorParallel",
    "TensorParallelError",
    "check_tensor_parallel",
]
