"""KV cache tiers: evicted prefix-cache blocks written back to host memory and disk, and
copied back instead of recomputed (see docs/kv_tiers.md)."""

from deploylab.engine.kv_tiers.config import build_kv_tiers, validate_kv_tier_config
from deploylab.engine.kv_tiers.cost import CostModel
from deploylab.engine.kv_tiers.manager import KVTiers, TierStats

__all__ = ["CostModel", "KVTiers", "TierStats", "build_kv_tiers", "validate_kv_tier_config"]
