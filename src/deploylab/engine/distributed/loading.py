"""Each rank's part of the model: a loaded model cut to its slices, or random weights
made in the rank's shapes directly (shapes too big for one device, e.g. 70B on 8 GPUs)."""

from __future__ import annotations

from typing import Any

import torch

from deploylab.catalog import resolve_model
from deploylab.engine.config import EngineConfig
from deploylab.engine.distributed.layers import Communicator, parallelize, shard_model
from deploylab.engine.distributed.plan import ShardPlan, check_tensor_parallel
from deploylab.engine.models.config import LlamaConfig
from deploylab.engine.models.llama import LlamaForCausalLM


def full_model_config(config: EngineConfig) -> LlamaConfig:
    """The served model's shape, read without loading weights (GGUF metadata, config.json
    or the random-weight preset)."""
    if config.random_weights:
        from deploylab.engine.models.presets import get_preset

        return get_preset(config.random_weights)
    path = resolve_model(config.model)
    if path.is_file():
        from deploylab.engine.models.gguf_loader import _open, config_from_gguf

        reader = _open(path)
        return config_from_gguf(reader, path, {t.name for t in reader.tensors})
    from deploylab.engine.models.loader import load_hf_config

    return load_hf_config(path)


def check_config(config: EngineConfig) -> None:
    """ConfigError now, before any process starts, when the model's heads cannot be split
    `config.tensor_parallel_size` ways."""
    check_tensor_parallel(full_model_config(config), config.tensor_parallel_size)


def load_shard(
    config: EngineConfig, rank: int, world: int, device: torch.device, comm: Communicator
) -> tuple[LlamaForCausalLM, Any | None]:
    """This rank's model (on `device`, wired to `comm`) and the tokenizer (None for random)."""
    dtype = config.torch_dtype(device)
    if config.random_weights:
        from deploylab.engine.models.loader import init_random_model
        from deploylab.engine.models.presets import get_preset

        full = get_preset(config.random_weights)
        plan = ShardPlan.build(full, rank, world)
        model = init_random_model(plan.local_config(full), dtype, device, seed=config.seed + rank)
        model.config = model.model.config = plan.local_config(full)
        return parallelize(model, plan, comm), None
    from deploylab.engine.models.loader import load_model
    from deploylab.engine.tokenizer import load_tokenizer

    path = resolve_model(config.model)
    # Loaded on the CPU, cut, then moved: a device holds only its slices.
    model, full_config = load_model(path, dtype, torch.device("cpu"))
    plan = ShardPlan.build(full_config, rank, world)
    model = shard_model(model, plan, comm).to(device)
    return model, load_tokenizer(path) if rank == 0 else None
