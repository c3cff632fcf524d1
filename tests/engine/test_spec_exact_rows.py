"""A speculative verify row is computed bit for bit as the decode row it stands for.

Greedy identity with the plain engine needs more than "close": with int4 weights the CPU path
rounds activations to bfloat16, so a 1e-7 difference in an attention output can move a value
across a rounding boundary and change a later token. These tests pin the law on random caches
(chains and token trees, one and two threads) and on the real model with int4 weights.
"""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

import pytest
import torch
from tests.engine.conftest import ModelParts

from deploylab.engine import EngineConfig, SamplingParams
from deploylab.engine.attention import decode_rows_attention
from deploylab.engine.cpu_quant import apply_quantization
from deploylab.engine.spec_decode.verify_attention import build_verify_batch, tree_paths

BS, KVH, GROUPS, D = 16, 3, 3, 64  # SmolLM2's attention shape: 9 query heads over 3 KV heads


@pytest.fixture(params=[1, 2], ids=["1-thread", "2-threads"])
def threads(request: pytest.FixtureRequest) -> Any:
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield
    torch.set_num_threads(before)


def _decode_row(
    q_row: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, pad_blocks: int
) -> torch.Tensor:
    """What a decode step computes for one query token whose context is `keys`/`values`
    `[kvh, n, d]`, laid out as the decode path does (padded to whole blocks, masked)."""
    n = keys.shape[1]
    length = (-(-n // BS) + pad_blocks) * BS
    k = torch.zeros(1, KVH, length, D)
    v = torch.zeros(1, KVH, length, D)
    k[0, :, :n], v[0, :, :n] = keys, values
    bias = torch.zeros(1, 1, 1, length).masked_fill_(torch.arange(length) >= n, float("-inf"))
    return decode_rows_attention(q_row.view(1, KVH, GROUPS, D), k, v, bias, 0.125)[0]


@pytest.mark.parametrize("seed", [0, 1])
def test_verify_rows_are_decode_rows_bit_for_bit(seed: int, threads: Any) -> None:
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    nb = 120
    k_cache = torch.randn(KVH, nb, BS, D, generator=gen)
    v_cache = torch.randn(KVH, nb, BS, D, generator=gen)
    free = list(range(1, nb))
    rng.shuffle(free)  # blocks scattered in the cache
    items, start = [], 0
    trees = [None, [-1, 0, 1, -1, 3], None, [-1, -1, 0, 2, 1, -1]]
    for ctx, tree in zip((37, 300, 5, 130), trees, strict=True):
        ql = (len(tree) if tree is not None else rng.randrange(1, 8)) + 1
        table = [free.pop() for _ in range(-(-(ctx + ql) // BS))]
        items.append((start, ql, ctx, table, tree))
        start += ql
    q = torch.randn(start, KVH * GROUPS, D, generator=gen)
    head_rows = torch.arange(KVH, dtype=torch.int64) * nb
    got = torch.zeros_like(q)
    build_verify_batch(items, head_rows, BS, q.device)(q, k_cache, v_cache, got, 0.125)

    def token_kv(cache: torch.Tensor, table: list[int], pos: int) -> torch.Tensor:
        return cache[:, table[pos // BS], pos % BS]  # [kvh, d]

    for qs, ql, ctx, table, tree in items:
        paths = tree_paths(tree) if tree is not None else [list(range(r + 1)) for r in range(ql)]
        for r in range(ql):
            positions = list(range(ctx)) + [ctx + c for c in paths[r]]  # context, then path
            keys = torch.stack([token_kv(k_cache, table, p) for p in positions], dim=1)
            values = torch.stack([token_kv(v_cache, table, p) for p in positions], dim=1)
            want = _decode_row(q[qs + r], keys, values, pad_blocks=r % 2)
            assert torch.equal(got[qs + r].view(KVH, GROUPS, D), want), (ctx, tree, r)


@pytest.fixture(scope="module")
def smol_int4(smol: ModelParts) -> ModelParts:
    """The real model with the GGUF's int4 weights (the CPU default), its own copy."""
    from deploylab.engine.models.loader import load_model

    model, _ = load_model(smol.path, torch.float32, torch.device("cpu"))
    config = EngineConfig(model=str(smol.path), quantization="int4")
    assert apply_quantization(config, model, torch.device("cpu"), own=True) == "int4"
    return replace(smol, model=model)


SPEC = [
    {"method": "ngram", "num_speculative_tokens": 4, "adaptive": False},
    {"method": "head", "num_speculative_tokens": 4, "adaptive": False, "tree_width": 3},
]


@pytest.mark.parametrize("weights", ["int4", "float"])
@pytest.mark.parametrize("spec", SPEC, ids=["ngram", "head-tree"])
def test_greedy_speculation_is_token_identical(
    smol: ModelParts, smol_int4: ModelParts, weights: str, spec: dict[str, Any]
) -> None:
    """Measured before verify rows took the decode rows' arithmetic: with int4 weights both
    prompts diverged from the plain engine within 40 tokens; on the float path the head's
    drafts changed the haiku at token 39 (oneDNN's one-row products)."""
    parts = smol_int4 if weights == "int4" else smol
    prompts = ["Write a haiku about the sea.", "Explain in two sentences why the sky is blue."]
    convs = [[{"role": "user", "content": p}] for p in prompts]
    params = SamplingParams(temperature=0, max_tokens=64)
    plain = parts.llm(max_num_seqs=1).chat(convs, params)
    llm = parts.llm(max_num_seqs=1, speculative_config=spec)
    fast = llm.chat(convs, params)
    assert [o.token_ids for o in fast] == [o.token_ids for o in plain]
    assert llm.llm_engine.spec.stats.num_accepted_tokens > 0  # drafts were kept
