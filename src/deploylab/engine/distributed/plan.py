"""`ShardPlan`: which heads, MLP columns and vocabulary rows one tensor-parallel rank holds."""

from __future__ import annotations

from dataclasses import dataclass

from deploylab.engine.models.config import LlamaConfig
from deploylab.errors import ConfigError

Span = tuple[int, int]  # [start, end)


def ceil_span(total: int, rank: int, world: int) -> Span:
    """Rank `rank`'s part of `total` rows in chunks of ceil(total / world); the last ranks
    may hold fewer (padding stays at the end, so gathered pieces concatenate in order)."""
    size = -(-total // world)
    return min(rank * size, total), min((rank + 1) * size, total)


@dataclass(frozen=True)
class ShardPlan:
    """One rank's slices of the model: query heads, KV heads, MLP columns, vocabulary rows.

    KV heads are split into contiguous groups (the first ranks take one more when they do
    not divide), each with its query heads, so attention needs no communication. With fewer
    KV heads than ranks, each KV head is replicated on `world / kv_heads` ranks.
    """

    rank: int
    world: int
    q_heads: Span
    kv_heads: Span
    intermediate: Span
    vocab: Span
    vocab_shard: int  # padded columns of every rank's LM-head output

    @classmethod
    def build(cls, config: LlamaConfig, rank: int, world: int) -> ShardPlan:
        """The plan of `rank` out of `world`; ConfigError when the heads cannot be split."""
        heads, kv = config.num_attention_heads, config.num_key_value_heads
        group = heads // kv
        if world <= kv:
            base, extra = divmod(kv, world)
            start = rank * base + min(rank, extra)
            kv_span = (start, start + base + (rank < extra))
            q_span = (kv_span[0] * group, kv_span[1] * group)
        elif world % kv == 0 and heads % world == 0:
            per = heads // world
            q_span = (rank * per, (rank + 1) * per)
            kv_head = rank // (world // kv)
            kv_span = (kv_head, kv_head + 1)
        else:
            raise ConfigError(
                f"tensor_parallel_size {world} does not fit this model's heads "
                f"({heads} query, {kv} key/value): use a size up to {kv}, or a multiple of {kv} "
                f"that divides {heads}."
            )
        if config.intermediate_size < world or config.vocab_size < world:
            raise ConfigError(f"tensor_parallel_size {world} is larger than the model's layers.")
        vocab = ceil_span(config.vocab_size, rank, world)
        return cls(
            rank=rank,
            world=world,
            q_heads=q_span,
            kv_heads=kv_span,
            intermediate=ceil_span(config.intermediate_size, rank, world),
            vocab=vocab,
            vocab_shard=-(-config.vocab_size // world),
        )

    def local_config(self, config: LlamaConfig) -> LlamaConfig:
        """The config of this rank's layers: its heads and MLP columns, the full vocabulary
        (the engine validates token ids against it; the vocab-parallel modules hold a slice)."""
        q0, q1 = self.q_heads
        k0, k1 = self.kv_heads
        i0, i1 = self.intermediate
        return config.with_updates(
            num_attention_heads=q1 - q0, num_key_value_heads=k1 - k0, intermediate_size=i1 - i0
        )


def check_tensor_parallel(config: LlamaConfig, world: int) -> None:
    """Raise ConfigError unless every rank of `world` gets a valid plan."""
    for rank in range(world):
        ShardPlan.build(config, rank, world)
