"""Batched verify attention (spec_decode/verify_attention.py): one SDPA call per layer for
every verify chunk of a step gives the same logits as one call per chunk; a verify chunk
replayed through the decode CUDA graphs as k + 1 decode rows keeps greedy output."""

from __future__ import annotations

import json
import random

import pytest
import torch
from tests.engine.conftest import ModelParts

from deploylab.engine.attention import AttentionMetadata
from deploylab.engine.model_runner import ModelRunner
from deploylab.engine.sampling_params import SamplingParams
from deploylab.engine.scheduler import ScheduledSeq, SchedulerOutput
from deploylab.engine.sequence import Sequence
from deploylab.errors import ConfigError


def mixed_batch(block_size: int) -> SchedulerOutput:
    """Decodes, verify chunks of different lengths and contexts (some blocks shared, one
    context ending mid-block), and a fresh prefill chunk, in one step."""
    rng = random.Random(0)
    out = SchedulerOutput()
    params = SamplingParams(temperature=0)
    next_block = 0
    layout = [(37, 0, 0), (5, 1, 0), (16, 4, 0), (70, 3, 0), (0, 0, 1), (33, 2, 0)]
    for i, (ctx, k, prefill) in enumerate(layout):  # (cached tokens, drafts, prefill?)
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


class EagerGraphs:
    """`DecodeGraphs.run`'s contract, run eagerly on the CPU (one decode row per input row,
    each attending to its own context): the rows the runner hands a decode graph."""

    lora = None
    max_batch = 64

    def __init__(self, runner: ModelRunner) -> None:
        self.runner = runner
        self.row_counts: list[int] = []
        self.tree_steps = 0

    def run(self, ids: list[int], pos: list[int], slots: list[int], tables: list[list[int]],
            lens: list[int], lora_slots: list[int] | None = None,
            token_fill: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        assert token_fill is None  # async scheduling is off with speculation
        r = self.runner
        slot_t = torch.tensor(slots, dtype=torch.int64)
        meta = AttentionMetadata(
            num_tokens=len(ids),
            write_index=(r._head_slots[:, None] + slot_t[None, :]).flatten(),
            num_decodes=len(ids),
            workspace=r.workspace,
        )
        plan = r.tree.plan(tables, lens) if r.tree is not None else None
        if plan is not None:  # rows sharing blocks: the tree-attention plan, as a graph does
            meta.decode_kernel = r.tree.eager(plan, r.device)  # type: ignore[union-attr]
            self.tree_steps += 1
        else:
            groups = [r._decode_group(i, [tables[i]], [lens[i]]) for i in range(len(ids))]
            meta.decode_groups = groups
        self.row_counts.append(len(ids))
        ids_t, pos_t = torch.tensor(ids), torch.tensor(pos)
        with torch.inference_mode():
            hidden = r.model(ids_t, pos_t, meta, r.kv_cache.layers)
            return r.model.compute_logits(hidden)


@pytest.mark.parametrize("tree", [False, True], ids=["groups", "tree-plan"])
def test_verify_steps_replay_decode_graph_rows(tiny: ModelParts, tree: bool) -> None:
    """Greedy output through the graph path (verify chunks as decode rows) equals the plain
    engine's, and verify steps did go through it (more rows than sequences); also with the
    tree-attention plan, which reads the blocks a sequence's rows share once."""
    from tests.engine.test_spec_decode import NGRAM, greedy_params, looping_prompts, run

    prompts = looping_prompts(6, seed=4)
    params = greedy_params(len(prompts))
    expected = run(tiny.engine(), prompts, params)
    config = {**NGRAM, "cuda_graph_verify": True}
    engine = tiny.engine(speculative_config=config, tree_attention=tree)
    graphs = EagerGraphs(engine.runner)
    engine.runner.graphs = graphs  # type: ignore[assignment]
    got = run(engine, prompts, params)
    assert [o.token_ids for o in got] == [o.token_ids for o in expected]
    assert engine.spec.stats.num_accepted_tokens > 0  # type: ignore[union-attr]
    assert max(graphs.row_counts) > len(prompts)
    assert (graphs.tree_steps > 0) == tree


def test_cuda_graph_rows_hold_every_verify_row() -> None:
    from deploylab.engine.cuda_graphs import BUCKETS
    from deploylab.engine.spec_decode.config import cuda_graph_rows

    on = {"method": "ngram", "num_speculative_tokens": 4, "cuda_graph_verify": True}
    assert cuda_graph_rows(8, None) == 8
    assert cuda_graph_rows(8, on | {"cuda_graph_verify": False}) == 8  # turned off
    assert cuda_graph_rows(8, on) == 40
    default = {"method": "ngram", "num_speculative_tokens": 4}
    assert cuda_graph_rows(8, default) == 40  # on by default
    assert cuda_graph_rows(256, json.dumps(on)) == BUCKETS[-1]
    assert cuda_graph_rows(1024, on | {"num_speculative_tokens": 1}) == 1024
    with pytest.raises(ConfigError, match="cuda_graph_verify must be true or false"):
        cuda_graph_rows(8, on | {"cuda_graph_verify": "yes"})


def test_verify_steps_stay_out_of_graphs_when_turned_off(tiny: ModelParts) -> None:
    from tests.engine.test_spec_decode import NGRAM, greedy_params, looping_prompts, run

    engine = tiny.engine(speculative_config={**NGRAM, "cuda_graph_verify": False})
    graphs = EagerGraphs(engine.runner)
    engine.runner.graphs = graphs  # type: ignore[assignment]
    prompts = looping_prompts(4, seed=5)
    run(engine, prompts, greedy_params(len(prompts)))
    assert engine.spec.stats.num_drafts > 0  # type: ignore[union-attr]
    assert max(graphs.row_counts) <= len(prompts)  # verify steps ran eagerly
