"""The KV-tier settings of `EngineConfig`: validation and building the `KVTiers` hook."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from deploylab.errors import ConfigError

if TYPE_CHECKING:
    from deploylab.engine.config import EngineConfig
    from deploylab.engine.kv_cache import KVCache
    from deploylab.engine.kv_tiers.manager import KVTiers

POLICIES = ("auto", "always")
GIB = 1024**3


def validate_kv_tier_config(c: EngineConfig) -> None:
    """Raise ConfigError naming the first invalid KV-tier field."""
    for name in ("kv_offload_gib", "kv_offload_disk_gib"):
        value = getattr(c, name)
        if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
            raise ConfigError(f"EngineConfig.{name} must be a number >= 0 (GiB), got {value!r}.")
    if c.kv_offload_policy not in POLICIES:
        raise ConfigError(
            f"EngineConfig.kv_offload_policy must be one of {', '.join(POLICIES)}, "
            f"got {c.kv_offload_policy!r}."
        )
    if c.kv_offload_dir is not None:
        if not c.kv_offload_gib:
            raise ConfigError(
                "kv_offload_dir needs a host tier to stage through: set kv_offload_gib > 0."
            )
        if not c.kv_offload_disk_gib:
            raise ConfigError("kv_offload_dir is set but kv_offload_disk_gib is 0; raise it.")
    if not isinstance(c.kv_offload_write_ahead, bool):
        raise ConfigError(
            f"EngineConfig.kv_offload_write_ahead must be True or False, "
            f"got {c.kv_offload_write_ahead!r}."
        )
    if c.kv_offload_write_ahead and not c.kv_offload_gib:
        raise ConfigError(
            "kv_offload_write_ahead writes blocks to the host tier: set kv_offload_gib > 0."
        )
    if (c.kv_offload_gib or c.kv_offload_dir) and not c.enable_prefix_caching:
        raise ConfigError(
            "KV offloading keeps prefix-cache blocks: it needs enable_prefix_caching=True."
        )


def build_kv_tiers(c: EngineConfig, kv_cache: KVCache, model_identity: Any) -> KVTiers | None:
    """The `KVTiers` hook for this engine (None when `kv_offload_gib` is 0)."""
    if not c.kv_offload_gib:
        return None
    from deploylab.engine.kv_tiers.layerwise import LayerwiseKVTiers
    from deploylab.engine.kv_tiers.manager import KVTiers

    # Default on: on the H100, TTFT of a 16k (32k) host-tier hit 32 (73) ms layer by layer
    # against 62 (120) ms chunked (docs/benchmarks.md); on the CPU it is faster as well.
    layerwise = c.kv_offload_layerwise is not False
    cls = LayerwiseKVTiers if layerwise else KVTiers
    return cls(
        kv_cache,
        host_bytes=int(c.kv_offload_gib * GIB),
        disk_dir=c.kv_offload_dir,
        disk_bytes=int(c.kv_offload_disk_gib * GIB),
        identity=str(model_identity),
        policy=c.kv_offload_policy,
        write_ahead=c.kv_offload_write_ahead,
    )
