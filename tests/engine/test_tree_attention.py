"""Tree attention: the KV-guided plan, its torch path and the Triton kernel against references."""

from __future__ import annotations

import importlib.util
import os
import random
import subprocess
import sys

import pytest
import torch

from deploylab.engine import SamplingParams
from deploylab.engine.tree_attention import (
    build_tree_plan,
    dense_tree_reference,
    tree_decode_reference,
)
from deploylab.engine.triton_attention import reference_decode

from .conftest import ModelParts

HAS_TRITON = importlib.util.find_spec("triton") is not None


class _Cache:
    """A paged KV cache with a block allocator, for building trees the way the engine forks."""

    def __init__(self, kv_heads: int, blocks: int, block_size: int, dim: int, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.k = torch.randn(kv_heads, blocks, block_size, dim, generator=gen)
        self.v = torch.randn(kv_heads, blocks, block_size, dim, generator=gen)
        self.bs = block_size
        self.free = list(range(blocks))
        random.Random(seed).shuffle(self.free)  # blocks scattered in the cache

    def extend(self, table: list[int], length: int, extra: int) -> tuple[list[int], int]:
        """A child of (table, length) with `extra` new tokens: full blocks shared, the partial
        last block copied (copy-on-write), new tokens in fresh blocks."""
        child = table[: length // self.bs]
        if length % self.bs:
            new = self.free.pop()
            self.k[:, new] = self.k[:, table[length // self.bs]]
            self.v[:, new] = self.v[:, table[length // self.bs]]
            child.append(new)
        while len(child) * self.bs < length + extra:
            child.append(self.free.pop())
        return child, length + extra


def _random_tree(
    rng: random.Random, cache: _Cache, prefix: int, width: int, depth: int
) -> tuple[list[list[int]], list[int]]:
    """Leaves of a random tree: a shared prefix, then `depth` levels branching to `width`."""
    nodes = [cache.extend([], 0, prefix)] if prefix else [([], 0)]
    for level in range(depth):
        fan = max(1, round(width ** (1 / depth))) if level < depth - 1 else 0
        grown = []
        for table, n in nodes:
            for _ in range(fan or 1):
                grown.append(cache.extend(table, n, rng.randint(1, 40)))
        nodes = grown
    while len(nodes) < width:  # top up to the exact width with branches off the prefix
        table, n = nodes[rng.randrange(len(nodes))]
        nodes.append(cache.extend(table, n, rng.randint(1, 40)))
    return [t for t, _ in nodes[:width]], [n for _, n in nodes[:width]]


CASES = [
    # (width, depth, prefix tokens, kv_heads, heads)
    (1, 1, 0, 2, 8),
    (4, 2, 100, 2, 8),
    (16, 3, 700, 3, 9),
    (64, 1, 257, 2, 8),
    (9, 8, 33, 1, 4),
    (32, 4, 2048, 2, 4),
]


@pytest.mark.parametrize(("width", "depth", "prefix", "kv_heads", "heads"), CASES)
def test_reference_path_matches_dense_attention(
    width: int, depth: int, prefix: int, kv_heads: int, heads: int
) -> None:
    rng = random.Random(width * 100 + depth)
    cache = _Cache(kv_heads, 1200, 16, 32, seed=width + depth)
    tables, lens = _random_tree(rng, cache, prefix, width, depth)
    q = torch.randn(len(lens), heads, 32, generator=torch.Generator().manual_seed(1))
    plan = build_tree_plan(tables, lens, 16, chunk_tokens=96, max_rows_per_task=16)
    got = tree_decode_reference(q, cache.k, cache.v, plan, 0.2)
    want = dense_tree_reference(q, cache.k, cache.v, tables, lens, 0.2)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # The plain kernel's reference agrees too (same attention, padded tables).
    width_blocks = max(len(t) for t in tables)
    padded = torch.tensor([t + [0] * (width_blocks - len(t)) for t in tables])
    plain = reference_decode(q, cache.k, cache.v, padded, torch.tensor(lens), 0.2)
    torch.testing.assert_close(got, plain, atol=1e-5, rtol=1e-5)


def test_shared_prefix_is_read_once() -> None:
    cache = _Cache(1, 400, 16, 8, seed=0)
    prompt = cache.extend([], 0, 1000)
    branches = [cache.extend(*prompt, 5) for _ in range(16)]
    plan = build_tree_plan([t for t, _ in branches], [n for _, n in branches], 16)
    # 1000 prompt tokens once (its partial last block was copied per branch: 8 tokens each),
    # plus 5 own tokens per branch.
    assert plan.tokens_plain == 16 * 1005
    assert plan.tokens_read == 992 + 16 * (8 + 5)
    assert plan.savings > 0.9
    assert plan.num_wide >= 1


def test_no_sharing_gives_one_solo_task_per_row() -> None:
    cache = _Cache(1, 100, 16, 8, seed=0)
    rows = [cache.extend([], 0, n) for n in (3, 40, 17)]
    plan = build_tree_plan([t for t, _ in rows], [n for _, n in rows], 16, chunk_tokens=1024)
    assert plan.num_wide == 0 and len(plan.tasks) == 3
    assert plan.tokens_read == plan.tokens_plain and plan.savings == 0


def test_long_segments_split_and_wide_tasks_cap_their_rows() -> None:
    cache = _Cache(1, 300, 16, 8, seed=0)
    prompt = cache.extend([], 0, 1024)
    rows = [cache.extend(*prompt, 1) for _ in range(40)]
    plan = build_tree_plan([t for t, _ in rows], [n for _, n in rows], 16, chunk_tokens=256)
    wide = plan.tasks[: plan.num_wide]
    assert (wide[:, 2] <= 256).all() and (wide[:, 4] <= 16).all()
    # 1024 shared tokens in 4 chunks, each for 40 rows in tiles of at most 16 rows.
    assert plan.num_wide == 4 * 3


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="length >= 1"):
        build_tree_plan([[0]], [0], 16)
    with pytest.raises(ValueError, match="one block table"):
        build_tree_plan([[0], [1]], [3], 16)


def _speculation_tree() -> tuple[_Cache, list[list[int]], list[int], torch.Tensor, torch.Tensor]:
    """Seven tree nodes appended after a 300-token context; each row attends to the context
    and to its ancestors (and itself) among the nodes."""
    cache = _Cache(2, 64, 16, 16, seed=3)
    table, n = cache.extend([], 0, 307)
    parents = [-1, 0, 0, 1, 1, 2, 3]  # node i's parent
    bits = []
    for i in range(7):
        b, j = 0, i
        while j >= 0:
            b |= 1 << j
            j = parents[j]
        bits.append(b)
    tables = [table] * 7
    lens = [n] * 7
    return cache, tables, lens, torch.full((7,), 300, dtype=torch.int32), torch.tensor(bits)


def test_tail_masks_serve_token_tree_verification() -> None:
    cache, tables, lens, starts, bits = _speculation_tree()
    q = torch.randn(7, 8, 16, generator=torch.Generator().manual_seed(0))
    plan = build_tree_plan(tables, lens, 16)
    assert plan.num_wide >= 1 and plan.tokens_read == 307  # the context is read once
    got = tree_decode_reference(q, cache.k, cache.v, plan, 0.25, starts, bits)
    want = dense_tree_reference(q, cache.k, cache.v, tables, lens, 0.25, starts, bits)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # The masks matter: node 6 sees nodes 0, 1, 3, 6 only, unlike full attention.
    full = dense_tree_reference(q, cache.k, cache.v, tables, lens, 0.25)
    assert not torch.allclose(got[6], full[6], atol=1e-3)


INNER = os.environ.get("DEPLOYLAB_TREE_INTERPRET") == "1"


@pytest.mark.skipif(
    not HAS_TRITON or torch.cuda.is_available(),
    reason="needs Triton; on CUDA machines the kernel is tested on the device instead",
)
def test_triton_kernel_matches_reference_in_the_interpreter() -> None:
    """The kernel's logic on the CPU through Triton's interpreter (tiny shapes). The
    interpreter must be chosen before Triton is imported, hence a fresh process."""
    env = dict(os.environ, TRITON_INTERPRET="1", DEPLOYLAB_TREE_INTERPRET="1")
    cmd = [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider", "-k", "inner"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "2 passed" in done.stdout, done.stdout[-3000:]


@pytest.mark.skipif(not INNER, reason="runs inside the interpreter test's process")
@pytest.mark.parametrize("masked", [False, True])
def test_inner_kernel_in_interpreter(masked: bool) -> None:
    """See test_triton_kernel_matches_reference_in_the_interpreter."""
    from deploylab.engine.triton_tree import rows_per_task, to_device, tree_decode

    if masked:
        cache, tables, lens, starts, bits = _speculation_tree()
        heads = 8
    else:
        rng = random.Random(0)
        cache = _Cache(3, 300, 16, 16, seed=0)
        tables, lens = _random_tree(rng, cache, 90, 20, 2)
        starts = bits = None
        heads = 9
    q = torch.randn(len(lens), heads, 16, generator=torch.Generator().manual_seed(2))
    kvh = cache.k.shape[0]
    plan = build_tree_plan(
        tables, lens, 16, chunk_tokens=64, max_rows_per_task=rows_per_task(heads, kvh)
    )
    got = tree_decode(q, cache.k, cache.v, to_device(plan, q.device), 0.25, starts, bits)
    want = dense_tree_reference(q, cache.k, cache.v, tables, lens, 0.25, starts, bits)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize(("width", "prefix"), [(1, 1), (16, 16384), (64, 32768), (8, 5000)])
def test_triton_kernel_on_cuda_matches_plain_kernel(width: int, prefix: int) -> None:
    """bf16 on the GPU, Llama-3.2-1B head shape, against the plain paged kernel and SDPA."""
    from deploylab.engine.triton_attention import load_paged_decode
    from deploylab.engine.triton_tree import rows_per_task, to_device, tree_decode

    dev = torch.device("cuda")
    rng = random.Random(width)
    blocks = (prefix + width * 80) // 16 + 4 * width + 16
    cache = _Cache(8, blocks, 16, 64, seed=width)
    tables, lens = _random_tree(rng, cache, prefix, width, 2 if width > 1 else 1)
    k, v = cache.k.to(dev, torch.bfloat16), cache.v.to(dev, torch.bfloat16)
    q = torch.randn(len(lens), 32, 64, device=dev, dtype=torch.bfloat16)
    plan = build_tree_plan(tables, lens, 16, max_rows_per_task=rows_per_task(32, 8))
    got = tree_decode(q, k, v, to_device(plan, dev), 0.125)
    w = max(len(t) for t in tables)
    padded = torch.tensor([t + [0] * (w - len(t)) for t in tables], dtype=torch.int32, device=dev)
    lens_t = torch.tensor(lens, dtype=torch.int32, device=dev)
    ref = reference_decode(q, k, v, padded, lens_t, 0.125)
    torch.testing.assert_close(got.float(), ref.float(), atol=2e-2, rtol=2e-2)
    plain = load_paged_decode(dev, torch.bfloat16)
    assert plain is not None
    torch.testing.assert_close(
        got.float(), plain(q, k, v, padded, lens_t, 0.125).float(), atol=2e-2, rtol=2e-2
    )


# --- the engine with tree attention (forced on the CPU: the grouped torch path) -------------

TREE_PROMPT = list(range(2000, 2070))  # 70 tokens: four full shared blocks and a partial one


def test_llm_n8_samples_with_tree_attention_match_separate_requests(smol: ModelParts) -> None:
    """n = 8 with a seed: each branch, decoded with tree attention, is exactly the separate
    request seeded seed + i (decoded with the plain path)."""
    llm = smol.llm(tree_attention=True, enable_prefix_caching=False)
    params = SamplingParams(n=8, temperature=1.0, seed=5, max_tokens=10, ignore_eos=True)
    forked = [o.token_ids for o in llm.generate([TREE_PROMPT], params)]
    assert llm.llm_engine.stats().num_tree_attention_steps_total >= 9  # every decode step
    plain = smol.llm(enable_prefix_caching=False)
    assert plain.llm_engine.runner.tree is None  # off by default on the CPU
    separate = plain.generate(
        [TREE_PROMPT] * 8,
        [
            SamplingParams(temperature=1.0, seed=5 + i, max_tokens=10, ignore_eos=True)
            for i in range(8)
        ],
    )
    assert forked == [o.token_ids for o in separate]
    assert len({tuple(t) for t in forked}) > 1


def test_llm_prefix_hits_decode_identically_with_tree_attention(smol: ModelParts) -> None:
    """Requests sharing a cached prefix (shared blocks without forking): greedy output with
    tree attention equals the plain path's, and no block leaks."""
    prompts = [TREE_PROMPT + [3000 + i, 3100 + i] for i in range(5)]
    greedy = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    tree = smol.llm(tree_attention=True)
    tree.generate([prompts[0]], greedy)  # fill the prefix cache
    got = [o.token_ids for o in tree.generate(prompts, greedy)]
    assert tree.llm_engine.stats().num_tree_attention_steps_total > 0
    bm = tree.llm_engine.block_manager
    assert bm.num_free_blocks == bm.num_blocks
    want = [o.token_ids for o in smol.llm().generate(prompts, greedy)]
    assert got == want


def _forked(width: int, prefix: int, suffix: int = 64, bs: int = 16) -> tuple[list, list]:
    """Block tables and lengths of `width` branches forked from one `prefix`-token prompt."""
    shared = list(range(prefix // bs))
    own = -(-(prefix % bs + suffix) // bs)
    nxt = len(shared)
    tables = []
    for _ in range(width):
        tables.append(shared + list(range(nxt, nxt + own)))
        nxt += own
    return tables, [prefix + suffix] * width


@pytest.mark.parametrize(
    ("width", "prefix", "won_on_h100"),
    [(2, 4096, False), (4, 4096, True), (16, 1024, True), (64, 256, False), (16, 256, False),
     (4, 1024, False), (2, 16384, True), (64, 1024, True), (16, 16384, True), (2, 0, False)],
)  # fmt: skip
def test_default_decoder_picks_the_tree_where_it_won_on_the_h100(
    width: int, prefix: int, won_on_h100: bool
) -> None:
    """The CUDA defaults reproduce the measured crossover (docs/benchmarks.md)."""
    from deploylab.engine.triton_tree import TreeDecoder

    decoder = TreeDecoder(32, 8, 16)
    tables, lens = _forked(width, prefix)
    assert (decoder.plan(tables, lens) is not None) is won_on_h100
    assert (
        TreeDecoder(32, 8, 16, min_saved_tokens=0, min_saved_per_row=0).plan(*_forked(16, 256))
        is not None
    )  # the CPU floors: any saving above min_savings
