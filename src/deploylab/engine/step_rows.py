"""A step's token rows as the model runner builds them on the host, before one upload:
decode rows first (longest context first), then multi-token chunks (the prefill kernel's,
then token-tree verify chunks)."""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field

from deploylab.engine.attention import PrefillChunk
from deploylab.engine.sequence import Sequence
from deploylab.engine.spec_decode.verify_attention import VerifyItem


@dataclass
class StepRows:
    """The host-side lists of one step (see `ModelRunner.prepare`)."""

    ids: list[int] = field(default_factory=list)  # decode rows' input ids
    pos: list[int] = field(default_factory=list)  # positions made on the host
    slots: list[int] = field(default_factory=list)  # their cache slots
    sample_rows: list[int] = field(default_factory=list)
    sample_seqs: list[Sequence] = field(default_factory=list)
    ctx_lens: list[int] = field(default_factory=list)  # decode rows' context lengths
    tables: list[list[int]] = field(default_factory=list)  # decode rows' block tables
    prefills: list[PrefillChunk] = field(default_factory=list)
    chunk_ids: list[array] = field(default_factory=list)  # each chunk's input ids, packed
    # The prefill kernel's (query start, query length, context length) and block tables.
    kernel_chunks: list[tuple[int, int, int]] = field(default_factory=list)
    kernel_tables: list[list[int]] = field(default_factory=list)
    verify_items: list[VerifyItem] = field(default_factory=list)  # attended together


def chunk_slots(table: list[int], p0: int, n: int, block_size: int) -> list[int]:
    """Cache slots of positions `[p0, p0 + n)` of a sequence with block table `table`."""
    slots: list[int] = []
    p, end = p0, p0 + n
    while p < end:
        off = p % block_size
        take = min(block_size - off, end - p)
        base = table[p // block_size] * block_size + off
        slots.extend(range(base, base + take))
        p += take
    return slots


def group_sizes(
    ctx_lens: list[int], block_size: int, token_bytes: int, group_bytes: int, min_fill: float
) -> list[int]:
    """Split decode rows (sorted longest first) into attention groups: a group's padded keys
    stay under `group_bytes`, and a row shorter than `min_fill` of its padded length starts
    a new group."""
    sizes: list[int] = []
    count, padded = 0, 0
    for n in ctx_lens:
        if count and ((count + 1) * padded * token_bytes > group_bytes or n < min_fill * padded):
            sizes.append(count)
            count = 0
        if count == 0:
            padded = -(-n // block_size) * block_size
        count += 1
    if count:
        sizes.append(count)
    return sizes
