"""`PrefillBatch.positions_and_slots`: the device-side positions and cache slots of the
prefill kernel's chunks equal what the host computes token by token."""

from __future__ import annotations

import torch

from deploylab.engine.triton_prefill import PrefillBatch


def test_positions_and_slots_match_a_token_by_token_walk() -> None:
    bs, first_row = 16, 3  # three decode rows come before the chunks
    # (cached tokens, query length, block table) per chunk
    chunks = [(0, 40, [7, 2, 9]), (130, 5, list(range(20, 29))), (31, 17, [4, 11, 5, 6])]
    starts, row = [], first_row
    for _, n, _ in chunks:
        starts.append(row)
        row += n
    width = max(len(t) for _, _, t in chunks)
    info = torch.tensor([starts, [n for _, n, _ in chunks], [c + n for c, n, _ in chunks]])
    tables = torch.tensor([t + [0] * (width - len(t)) for _, _, t in chunks])
    batch = PrefillBatch(info, tables, max_query_len=40)
    pos, slots = batch.positions_and_slots(first_row, row, bs)
    want_pos = [p for c, n, _ in chunks for p in range(c, c + n)]
    want_slots = [t[p // bs] * bs + p % bs for c, n, t in chunks for p in range(c, c + n)]
    assert pos.tolist() == want_pos
    assert slots.tolist() == want_slots


def test_one_chunk_shortcut_matches_the_general_path() -> None:
    """With one chunk whose first position is known on the host, the shortcut gives the same
    positions and slots as the general computation."""
    bs = 16
    table = [5, 9, 2, 7, 3]
    info = torch.tensor([[2], [37], [70]])  # rows 2.., 37 tokens after 33 cached ones
    tables = torch.tensor([table])
    general = PrefillBatch(info, tables, max_query_len=37).positions_and_slots(2, 39, bs)
    short = PrefillBatch(info, tables, 37, first_position=33).positions_and_slots(2, 39, bs)
    assert general[0].tolist() == short[0].tolist() == list(range(33, 70))
    assert general[1].tolist() == short[1].tolist()
    assert short[1].tolist() == [table[p // bs] * bs + p % bs for p in range(33, 70)]
