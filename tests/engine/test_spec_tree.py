"""Token trees of drafts in the engine (`speculative_config.tree_width`): greedy output equals
plain decoding whichever branch is kept (the kept path's KV moves into place) for ngram, head
and draft-model trees, sampled output follows the target (chi-square), and the tree helpers do
what they say."""

from __future__ import annotations

import gc
from collections import Counter
from collections.abc import Sequence as Seq
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from scipy.stats import chisquare
from tests.engine.conftest import ModelParts
from tests.engine.test_spec_decode import (
    NGRAM,
    greedy_params,
    keeps_greedy,
    looping_prompts,
    pressure_keeps_greedy,
    run,
)
from tests.engine.test_spec_decode_sampling import PROMPT, TOP_K, assert_follows, top_probs
from tests.engine.test_spec_draft_model import DRAFT, draft_is_clean
from tests.engine.test_spec_head import head_config, random_head

from deploylab.engine import LLMEngine, SamplingParams
from deploylab.engine.sequence import Sequence
from deploylab.engine.spec_decode.config import parse_speculative_config
from deploylab.engine.spec_decode.draft_model import DraftModelProposer
from deploylab.engine.spec_decode.tree_drafts import (
    chunk_mask,
    depths,
    lookup_tree,
    path_moves,
    walk_greedy,
    walk_sampled,
)
from deploylab.errors import ConfigError

TREE = {**NGRAM, "tree_width": 3}


def test_tree_helpers() -> None:
    parents = [-1, -1, 0, 1, 3]  # two root children; node 4 below node 3 below node 1
    assert depths(parents) == [1, 1, 2, 2, 3]
    mask = chunk_mask(parents)
    assert mask[5].tolist() == [True, False, True, False, True, True]  # root, 1, 3, itself
    assert mask[:, 0].all() and not mask[1, 2]
    tokens = [10, 11, 12, 13, 14]
    assert walk_greedy(parents, tokens, [11, 0, 13, 0, 14, 0]) == [1, 3, 4]
    assert walk_greedy(parents, tokens, [9, 0, 0, 0, 0, 0]) == []
    assert path_moves(100, [1, 3, 4]) == [(102, 101), (104, 102), (105, 103)]
    assert path_moves(100, [0]) == []  # a node already where a chain would have it stays
    assert path_moves(100, [0, 2]) == [(103, 102)]
    seq = np.array([1, 2, 3, 7, 1, 2, 3, 8, 9, 1, 2, 3])
    toks, pars = lookup_tree(seq, k=4, n_max=3, n_min=1, width=2)
    assert (toks, pars) == ([8, 9, 1, 7], [-1, 0, 1, -1])  # latest match first, then older


def test_sampled_walk_is_exact_for_point_mass_candidates() -> None:
    """Distinct deterministic candidates kept by recursive rejection: the emitted first
    token follows p whichever candidates are offered."""
    p = torch.tensor([[0.5, 0.3, 0.2, 0.0], [0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25]])
    gen = torch.Generator().manual_seed(0)
    n = 20000
    counts: Counter[int] = Counter()
    for _ in range(n):
        path, last = walk_sampled([-1, -1], [1, 2], p, gen)
        counts[[1, 2][path[0]] if path else last] += 1
    observed = [counts[t] for t in range(3)]
    assert chisquare(observed, [n * 0.5, n * 0.3, n * 0.2]).pvalue > 1e-3


# ngram trees; draft-model trees of width 2 and 4 (the 1-layer truncated draft's top-W firsts)
TREES = {
    "ngram": TREE,
    "draft-w2": {**DRAFT, "num_speculative_tokens": 4, "tree_width": 2},
    "draft-w4": {**DRAFT, "num_speculative_tokens": 5, "tree_width": 4},
}


def trees_were_used(engine: LLMEngine) -> None:
    """Drafts were kept, and a draft model's cache holds no block once every request ended."""
    assert engine.spec is not None and engine.spec.stats.num_accepted_tokens > 0
    if isinstance(engine.spec.proposer, DraftModelProposer):
        draft_is_clean(engine)


@pytest.mark.parametrize("config", TREES.values(), ids=TREES.keys())
@pytest.mark.parametrize(
    "settings",
    [{}, {"max_num_batched_tokens": 24, "max_num_seqs": 8}],
    ids=["plain", "chunked"],
)
def test_trees_keep_greedy_output(
    tiny: ModelParts, config: dict[str, Any], settings: dict[str, Any]
) -> None:
    """Mixed batches (every third request never speculates), chunked prefill cutting trees."""
    trees_were_used(keeps_greedy(tiny, config, **settings))


@pytest.mark.parametrize("config", TREES.values(), ids=TREES.keys())
def test_trees_under_preemption_and_prefix_hits(tiny: ModelParts, config: dict[str, Any]) -> None:
    trees_were_used(pressure_keeps_greedy(tiny, config))


class BranchProposer:
    """A tree whose first root child is wrong and whose second branch is the plain engine's
    continuation (`answers[request_id]`): every step keeps a branch that has to move."""

    free_to_propose = True

    def __init__(self, answers: dict[str, list[int]], vocab: int) -> None:
        self.answers = answers
        self.vocab = vocab

    def propose_tree(
        self, seqs: Seq[Sequence], ks: Seq[int], width: int
    ) -> list[tuple[list[int], list[int]]]:
        out = []
        for seq, k in zip(seqs, ks, strict=True):
            right = self.answers[seq.request_id][seq.num_output_tokens :][: max(k - 1, 0)]
            if not right:
                out.append(([], []))
                continue
            wrong = (right[0] + 1) % self.vocab
            out.append(([wrong, *right], [-1, -1, *range(1, len(right))]))
        return out


@pytest.mark.parametrize("logprobs", [None, 2])
def test_a_kept_second_branch_moves_into_place(tiny: ModelParts, logprobs: int | None) -> None:
    """Greedy (batched path) and greedy with logprobs (per-sequence path)."""
    prompts = looping_prompts(6, seed=4)
    params = [
        SamplingParams(temperature=0, max_tokens=20, ignore_eos=True, logprobs=logprobs)
        for _ in prompts
    ]
    expected = run(tiny.engine(), prompts, params)
    engine = tiny.engine(speculative_config={**TREE, "num_speculative_tokens": 5})
    assert engine.spec is not None
    answers = {o.request_id: list(o.token_ids) for o in expected}
    engine.spec.proposer = BranchProposer(answers, tiny.model.config.vocab_size)  # type: ignore[assignment]
    got = run(engine, prompts, params)
    assert [o.token_ids for o in got] == [o.token_ids for o in expected]
    if logprobs:
        for g, e in zip(got, expected, strict=True):
            assert [lp.logprob for lp in g.logprobs] == pytest.approx(
                [lp.logprob for lp in e.logprobs], abs=1e-4
            )
    st = engine.spec.stats
    assert st.num_accepted_tokens > 0.6 * st.num_draft_tokens  # all but the wrong node


class SampledTreeProposer:
    """After the first token a: a tree [second-best b, best b, best c after best b]."""

    free_to_propose = True

    def __init__(self, table: dict[int, list[int]]) -> None:
        self.table = table

    def propose_tree(
        self, seqs: Seq[Sequence], ks: Seq[int], width: int
    ) -> list[tuple[list[int], list[int]]]:
        out = []
        for seq in seqs:
            tree = (
                self.table.get(seq.token_ids[len(PROMPT)]) if seq.num_output_tokens == 1 else None
            )
            out.append((tree, [-1, -1, 1]) if tree else ([], []))
        return out


def test_sampled_trees_follow_the_target_distribution(tiny: ModelParts) -> None:
    plain = tiny.engine()
    p1 = top_probs(plain, PROMPT)
    exact: dict[tuple[int, ...], float] = {}
    table: dict[int, list[int]] = {}
    for a, pa in p1.items():
        p2 = top_probs(plain, [*PROMPT, a])
        ranked = sorted(p2, key=p2.__getitem__, reverse=True)
        p3_best = top_probs(plain, [*PROMPT, a, ranked[0]])
        table[a] = [ranked[1], ranked[0], max(p3_best, key=p3_best.__getitem__)]
        for b, pb in p2.items():
            for c, pc in top_probs(plain, [*PROMPT, a, b]).items():
                exact[(a, b, c)] = pa * pb * pc
    n = 2400
    engine = tiny.engine(
        speculative_config={**TREE, "num_speculative_tokens": 3, "adaptive": False},
        max_num_seqs=256,
        seed=7,
    )
    assert engine.spec is not None
    engine.spec.proposer = SampledTreeProposer(table)  # type: ignore[assignment]
    params = SamplingParams(temperature=1.0, top_k=TOP_K, max_tokens=3, ignore_eos=True)
    assert_follows(engine, params, exact, n)
    stats = engine.spec.stats
    assert 0 < stats.num_accepted_tokens < stats.num_draft_tokens


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"tree_width": 0}, r"tree_width must be an integer in \[1, 16\]"),
        ({"tree_width": 2, "cascade_rule": "v3"}, "the exact rules"),
        ({"tree_width": 2, "judge": True}, "the exact rules"),
        ({**DRAFT, "tree_width": 2, "cascade_rule": "v3"}, "the exact rules"),
        ({**DRAFT, "tree_width": 4, "judge_delta": 0.5}, "the exact rules"),
    ],
)  # fmt: skip
def test_tree_settings_are_validated(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_speculative_config({**NGRAM, **extra})
    for config in TREES.values():
        ok = parse_speculative_config(config)
        assert ok is not None and ok.tree_width == config["tree_width"] > 1


@pytest.mark.parametrize(
    "settings",
    [{}, {"max_num_batched_tokens": 24, "max_num_seqs": 8}],
    ids=["plain", "chunked"],
)
def test_head_trees_keep_greedy_output(
    tiny: ModelParts, tmp_path: Path, settings: dict[str, Any]
) -> None:
    """The head's top-3 first tokens as root children, the best one continued."""
    prompts = looping_prompts(10, seed=4)
    params = greedy_params(len(prompts))
    expected = run(tiny.engine(**settings), prompts, params)
    path = random_head(tiny, tmp_path / "h.safetensors", vocab=512)
    config = {**head_config(path), "num_speculative_tokens": 5, "tree_width": 3}
    engine = tiny.engine(speculative_config=config, **settings)
    assert engine.spec is not None
    seen: list[list[int]] = []
    propose_tree = engine.spec.proposer.propose_tree  # type: ignore[attr-defined]

    def spy(seqs, ks, width):  # noqa: ANN001, ANN202
        trees = propose_tree(seqs, ks, width)
        seen.extend(parents for _, parents in trees if parents)
        return trees

    engine.spec.proposer.propose_tree = spy  # type: ignore[attr-defined]
    got = run(engine, prompts, params)
    assert [o.token_ids for o in got] == [o.token_ids for o in expected]
    assert seen and all(p.count(-1) == 3 and len(p) == 5 for p in seen if len(p) == 5)
    assert any(p == [-1, 0, 1, -1, -1] for p in seen)  # a 3-deep chain and two siblings


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_trees_on_cuda_keep_greedy_output() -> None:
    """CUDA, float32, CUDA graphs and the Triton kernels for the other steps: tree verify
    chunks take the tree-attention kernel (tail masks), the kept second branch moves into
    place."""
    from deploylab.engine import LLM

    prompts = looping_prompts(6, seed=4)
    params = [SamplingParams(temperature=0, max_tokens=20, ignore_eos=True) for _ in prompts]
    settings: dict[str, Any] = {
        "random_weights": "tiny", "device": "cuda", "dtype": "float32", "max_num_seqs": 8,
        "max_model_len": 256, "gpu_memory_utilization": 0.15,
    }  # fmt: skip
    plain = LLM(**settings).llm_engine
    expected = run(plain, prompts, params)
    del plain
    gc.collect()  # the next engine sizes its KV cache from what this one leaves free
    torch.cuda.empty_cache()
    engine = LLM(
        **settings, speculative_config={**TREE, "num_speculative_tokens": 5}, tree_attention=True
    ).llm_engine  # float32 has no paged decode kernel, so no tree decoder unless asked
    assert engine.spec is not None
    answers = {o.request_id: list(o.token_ids) for o in expected}
    engine.spec.proposer = BranchProposer(answers, engine.model_config.vocab_size)  # type: ignore[assignment]
    got = run(engine, prompts, params)
    assert [o.token_ids for o in got] == [o.token_ids for o in expected]
    assert engine.spec.stats.num_accepted_tokens > 0
    assert engine.runner.tree is not None and engine.runner.tree.verify_steps > 0


def test_tree_chunks_beside_prefill_kernel_chunks_keep_row_order(tiny: ModelParts) -> None:
    """A step with token-tree verify chunks and prefill chunks of new requests: with the
    paged-prefill kernel's path (CUDA; a stand-in here, `prepare` only asks whether it is
    there) the step's tokens, positions and cache slots equal the host path's, row by row."""
    engine = tiny.engine(speculative_config=TREE, max_num_seqs=8)
    runner = engine.runner
    real_prepare = runner.prepare
    mixed, mismatched = [0], []

    def prepare(scheduled):  # noqa: ANN001, ANN202
        chunks = [s for s in scheduled if s.num_new_tokens > 1]
        if any(s.seq.draft_parents for s in chunks) and any(
            not s.seq.num_draft_tokens for s in chunks
        ):
            mixed[0] += 1
            saved = runner._prompt_rows[:]
            runner.paged_prefill = object()  # type: ignore[assignment]
            try:
                ids, pos, meta, _, _ = real_prepare(scheduled)
                kernel = (ids.tolist(), pos.tolist(), meta.write_index.tolist())
            finally:
                runner.paged_prefill = None
                runner._prompt_rows = saved
            out = real_prepare(scheduled)
            host = (out[0].tolist(), out[1].tolist(), out[2].write_index.tolist())
            if kernel != host:
                mismatched.append(mixed[0])
            return out
        return real_prepare(scheduled)

    runner.prepare = prepare  # type: ignore[method-assign]
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    for i, prompt in enumerate(looping_prompts(8, seed=1)):  # arrivals beside tree steps
        engine.add_request(f"r{i}", prompt, params)
        engine.step()
        engine.step()
    while engine.has_unfinished_requests():
        engine.step()
    assert mixed[0] > 0 and not mismatched


def test_the_head_drafts_from_the_kept_paths_last_row(tiny: ModelParts, tmp_path: Path) -> None:
    """After a tree step the head gets the hidden row that produced the last emitted token:
    the row after the kept path's last node."""
    path = random_head(tiny, tmp_path / "h.safetensors", vocab=512)
    config = {**head_config(path), "num_speculative_tokens": 5, "tree_width": 3}
    engine = tiny.engine(speculative_config=config)
    spec = engine.spec
    assert spec is not None
    step: dict[str, Any] = {}
    verify_greedy = spec._verify_greedy

    def spy_verify(spans, logits, sampler):  # noqa: ANN001, ANN202
        res = verify_greedy(spans, logits, sampler)
        step["first"] = {id(s): f for s, f in spans}
        step["paths"] = {id(s): list(p) for s, p in spec._paths}
        step["hidden"] = engine.runner.sample_hidden
        return res

    observe = spec.proposer.observe  # type: ignore[attr-defined]
    checked, wrong = [0], []

    def spy_observe(seqs, positions, hidden):  # noqa: ANN001, ANN202
        if step:
            for i, seq in enumerate(seqs):
                kept = step["paths"].get(id(seq))
                if kept:
                    want = step["hidden"][step["first"][id(seq)] + kept[-1] + 1]
                    checked[0] += 1
                    if not torch.equal(hidden[i], want):
                        wrong.append(kept)
            step.clear()
        observe(seqs, positions, hidden)

    spec._verify_greedy = spy_verify  # type: ignore[method-assign]
    spec.proposer.observe = spy_observe  # type: ignore[attr-defined]
    prompts = looping_prompts(10, seed=4)
    params = greedy_params(len(prompts))
    answers = {o.request_id: list(o.token_ids) for o in run(tiny.engine(), prompts, params)}
    branch = BranchProposer(answers, engine.model_config.vocab_size)
    spec.proposer.propose_tree = branch.propose_tree  # type: ignore[attr-defined]
    run(engine, prompts, params)
    assert checked[0] > 0 and not wrong
