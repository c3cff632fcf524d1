"""The one call `LLMEngine.__init__` makes to turn tensor parallelism on."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from deploylab.errors import ConfigError

if TYPE_CHECKING:
    from deploylab.engine.config import EngineConfig
    from deploylab.engine.distributed.executor import TensorParallel
    from deploylab.engine.models.llama import LlamaForCausalLM


def start_tensor_parallel(
    config: EngineConfig, model: LlamaForCausalLM | None
) -> tuple[TensorParallel, LlamaForCausalLM, Any | None]:
    """Start the worker ranks and load rank 0's shard: (group, model shard, tokenizer)."""
    if model is not None:
        raise ConfigError(
            "tensor_parallel_size > 1 loads the model in every rank: pass the model by name "
            "(EngineConfig.model), not as a module."
        )
    from deploylab.engine.distributed.executor import TensorParallel

    tp = TensorParallel(config)
    try:
        shard, tokenizer = tp.load_model()
    except BaseException:
        tp.close()
        raise
    return tp, shard, tokenizer


__all__ = ["start_tensor_parallel"]
