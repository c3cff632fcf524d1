"""Tensor parallelism: one process per device, gloo on the CPU and NCCL on CUDA.

`TensorParallel` (rank 0, inside `LLMEngine`) starts the workers, `ShardPlan` says which
heads, MLP columns and vocabulary rows a rank holds, `layers` has the parallel modules.
"""

from deploylab.engine.distributed.executor import (
    TensorParallel,
    TensorParallelError,
    TPModelRunner,
)
from deploylab.engine.distributed.plan import ShardPlan, check_tensor_parallel

__all__ = [
    "ShardPlan",
    "TPModelRunner",
    "TensorParallel",
    "TensorParallelError",
    "check_tensor_parallel",
]
