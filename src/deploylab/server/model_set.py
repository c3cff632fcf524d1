"""The models of a many-model server: from `--model` flags or a YAML file, loaded into a
`ResidencyManager` and attached to the app's state."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from deploylab.catalog import DEFAULT_MODEL, resolve_model
from deploylab.engine.config import EngineConfig
from deploylab.errors import ConfigError, UsageError
from deploylab.server.handlers import GenerationHandler
from deploylab.server.metrics import ServerMetrics
from deploylab.server.residency import (
    RESIDENT,
    SLEEPING,
    UNLOADED,
    ResidencyManager,
    ServedModel,
    check_fits,
)
from deploylab.server.residency_metrics import ModelSetMetrics

log = logging.getLogger(__name__)


class ModelEntry(BaseModel):
    """One model of a models file; unset settings come from the `deploylab serve` flags."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, description="Name in the API (the request's `model`).")
    model: str = Field(default=DEFAULT_MODEL, description="A known model name or a local path.")
    random_weights: str | None = Field(
        default=None, description="Serve random weights of this shape."
    )
    seed: int | None = Field(default=None, description="Seed (random weights and sampling).")
    dtype: str | None = None
    kv_cache_gib: float | None = Field(default=None, gt=0)
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1)
    max_model_len: int | None = Field(default=None, gt=0)
    max_num_seqs: int | None = Field(default=None, gt=0)

    def engine_config(self, base: EngineConfig) -> EngineConfig:
        """`base` with this entry's model and settings."""
        changes: dict[str, Any] = {"model": self.model}
        for key in ("random_weights", "seed", "dtype", "kv_cache_gib", "gpu_memory_utilization",
                    "max_model_len", "max_num_seqs"):  # fmt: skip
            value = getattr(self, key)
            if value is not None:
                changes[key] = value
        if self.max_num_seqs is not None:
            changes["max_num_batched_tokens"] = max(base.max_num_batched_tokens, self.max_num_seqs)
        try:
            return replace(base, **changes)
        except ConfigError as exc:
            raise UsageError(f"Model '{self.name}': {exc}") from None


class ModelsFile(BaseModel):
    """A models file: `models:` a list of entries."""

    model_config = ConfigDict(extra="forbid")

    models: list[ModelEntry] = Field(min_length=1)


def entries_from_flags(models: list[str], names: list[str]) -> list[ModelEntry]:
    """One entry per `--model`, named by the matching `--served-model-name` (or the model)."""
    if names and len(names) != len(models):
        raise UsageError(
            f"Got {len(models)} --model and {len(names)} --served-model-name options; give one "
            "--served-model-name per --model, in the same order, or none."
        )
    return [ModelEntry(name=n, model=m) for m, n in zip(models, names or models, strict=True)]


def load_models_file(path: Path) -> list[ModelEntry]:
    """Parse a models file; errors name the file and the bad field."""
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise UsageError(f"Cannot read the models file {path}: {exc}.") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"The models file {path} is not valid YAML: {exc}") from None
    try:
        return ModelsFile.model_validate(data).models
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise UsageError(
            f"The models file {path} is invalid at {where}: {first['msg']}. Expected "
            "`models:` a list of entries with `name` and `model` (see docs/models.md)."
        ) from None


def check_entries(entries: list[ModelEntry]) -> None:
    """Distinct names, and every checkpoint present (before anything is loaded)."""
    seen: set[str] = set()
    for e in entries:
        if e.name in seen:
            raise UsageError(f"Two models are served as '{e.name}'; served names must differ.")
        seen.add(e.name)
        if e.random_weights is None:
            resolve_model(e.model)  # ModelNotFoundError says how to get it


def build_manager(
    entries: list[ModelEntry],
    base: EngineConfig,
    budget_bytes: int | None,
    keep_alive: float | None,
    sleep_level: int,
    max_resident: int | None = None,
) -> ResidencyManager:
    """Load every model (one engine each); a model that does not fit next to the ones before
    it goes to sleep right after loading. A model over the budget on its own raises
    ConfigError at once. Entries with the same checkpoint and settings load it once: the
    others start from a copy of its weights."""
    manager = ResidencyManager({}, budget_bytes, keep_alive, sleep_level, max_resident)
    loaded: dict[str, Any] = {}  # engine config (model name excluded) -> first LLMEngine
    try:
        for entry in entries:
            config = entry.engine_config(base)
            engine = _load_engine(config, loaded)
            sleeper = engine.engine.sleeper
            weights, kv = sleeper.weight_bytes(), sleeper.kv_bytes()
            check_fits(entry.name, weights, kv, budget_bytes)
            metrics = ServerMetrics(engine.stats, entry.name)
            served = ServedModel(
                entry.name, engine, GenerationHandler(engine, entry.name, metrics), metrics,
                weights, kv, last_used=manager.clock(),
            )  # fmt: skip
            if not manager.fits(served):
                engine.call(lambda e: e.sleep(sleep_level)).result()
                served.state = SLEEPING if sleep_level == 1 else UNLOADED
            manager.models[entry.name] = served
            manager.metrics.set_state(entry.name, served.state)
            log.info("loaded %s (%s)", entry.name, served.state)
    except BaseException:
        manager.shutdown()
        raise
    return manager


def _load_engine(config: EngineConfig, loaded: dict[str, Any]) -> Any:
    """An AsyncEngine for `config`; weights copied from an engine loaded before with the
    same checkpoint and settings when there is one (no second read of the file)."""
    from deploylab.engine.async_engine import AsyncEngine
    from deploylab.engine.llm_engine import LLMEngine
    from deploylab.engine.models.loader import build_model

    key = repr(sorted(config.to_dict().items()))
    first = loaded.get(key)
    if first is None or first.sleeper.is_sleeping:
        engine = AsyncEngine(config)
        loaded[key] = engine.engine
        return engine
    weights = {n: p.detach().clone() for n, p in first.model.named_parameters()}
    model = build_model(first.model_config, weights, first.dtype, first.device, config.model)
    return AsyncEngine(engine=LLMEngine(config, model=model, tokenizer=first.tokenizer))


def attach_models(state: Any, manager: ResidencyManager) -> None:
    """Make the app serve `manager`'s models (`state` is the app's ServerState)."""
    default = manager.default
    state.residency = manager
    state.engine = manager
    state.metrics = ModelSetMetrics(
        default.metrics, [m.metrics for m in manager.models.values()], manager.metrics
    )
    state.handler = manager.handler_for(None)
    if state.loop is not None:
        state.loop.call_soon_threadsafe(manager.start)
    state.ready.set()


__all__ = ["RESIDENT", "ModelEntry", "attach_models", "build_manager", "entries_from_flags"]
