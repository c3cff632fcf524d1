"""Batched verify attention (spec_decode/verify_attention.py): one SDPA call per layer for
every verify chunk of a step gives the same logits as one call per chunk."""

from __future__ import annotations

import random

import torch
from tests.engine.conftest import ModelParts

from deploylab.engine.sampling_params import SamplingParams
from deploylab.engine.scheduler import ScheduledSeq, SchedulerOutput
from deploylab.engine.sequence import Sequence


def mixed_batch(block_size: int) -> SchedulerOutput:
    """Decodes, verify chunks of different lengths and contexts (some blocks shared, one
    context ending mid-block), and a fresh prefill chunk, in one step."""
    rng = random.Random(0)
    out = SchedulerOutput()
    params = SamplingParams(temperature=0)
    next_block = 0
    # (cached tokens, drafts, prefill?) per sequence
    for i, (ctx, k, prefill) in enumerate(
        [(37, 0, False), (5, 1, False), (16, 4, False), (70, 3, False), (0, 0, True), (33, 2, False)]
    ):
        n = 9 if prefill else 1 + k
        ids = [rng.randrange(3, 256) for _ in range(ctx + n)]
        seq = Sequence(f"s{i}", ids, params, arrival=i)
        seq.num_computed_tokens = ctx
        seq.num_draft_tokens = k
        blocks = -(-(ctx + n) // block_size)
        seq.block_table = list(range(next_block, next_block + blocks))
        next_block += blocks
        out.scheduled.append(ScheduledSeq(seq, n))
    return out


def test_batched_verify_attention_matches_one_call_per_chunk(tiny: ModelParts) -> None:
    runner = tiny.engine().runner
    torch.manual_seed(0)
    for k_cache, v_cache in runner.kv_cache.layers:  # cached context: random keys and values
        k_cache.normal_()
        v_cache.normal_()
    out = mixed_batch(runner.block_size)
    runner.batch_verify = False
    assert runner.prepare(out.scheduled)[2].verify is None
    seqs_a, ref = runner.execute(out)
    runner.batch_verify = True
    meta = runner.prepare(out.scheduled)[2]
    assert meta.verify is not None and len(meta.prefills) == 1  # only the fresh prompt
    seqs_b, got = runner.execute(out)
    assert seqs_a == seqs_b and ref is not None and got is not None
    assert got.shape == (1 + 2 + 5 + 4 + 1 + 3, ref.shape[1])  # a row per draft + the last
    torch.testing.assert_close(got, ref, atol=2e-5, rtol=1e-4)
