"""Token trees: the ancestor mask, and exact verification of draft trees on a Markov model."""

from __future__ import annotations

import pytest
import torch

from deploylab.engine.spec import (
    ancestor_mask,
    greedy_tree_rule,
    importance_sampling_verify,
    node_depths,
    recursive_rejection,
    spectr_kseq,
    verify_tree,
)
from deploylab.engine.spec.sampling import DraftChoice
from deploylab.errors import InvalidRequestError

V = 4
CTX = V  # the Markov state of the prompt (row V of the tables)
BUSHY = [-1, 0, 0, 1, 1, 2, 2]  # root with two children, each with two children
CHAIN = [-1, 0, 1]  # a plain chain of two drafts


def _tables(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Target and draft next-token tables indexed by the last token (or CTX)."""
    g = torch.Generator().manual_seed(seed)
    tp = torch.rand(V + 1, V, generator=g, dtype=torch.float64) ** 2 + 0.02
    tq = torch.rand(V + 1, V, generator=g, dtype=torch.float64) ** 2 + 0.02
    tq[:, 0] = 0.0  # the draft never proposes token 0, which the target likes
    return tp / tp.sum(-1, keepdim=True), tq / tq.sum(-1, keepdim=True)


def _draft_tree(parents, state: torch.Tensor, tq: torch.Tensor, g: torch.Generator):
    """Sample tree tokens from the draft: each node's children i.i.d. from q(. | node)."""
    n = state.shape[0]
    tokens = torch.zeros(n, len(parents), dtype=torch.long)
    node_state = torch.zeros(n, len(parents), dtype=torch.long)
    node_state[:, 0] = state
    for i, a in enumerate(parents[1:], start=1):
        tokens[:, i] = torch.multinomial(tq[node_state[:, a]].float(), 1, generator=g).squeeze(1)
        node_state[:, i] = tokens[:, i]
    return tokens, node_state


def _pass(parents, state, tp, tq, rule, g):
    tokens, node_state = _draft_tree(parents, state, tq, g)
    return verify_tree(parents, tokens, tp[node_state], tq[node_state], rule, g)


def _first_two_tokens(parents, rule, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Run passes until two tokens exist; return them and the tables."""
    tp, tq = _tables(seed)
    g = torch.Generator().manual_seed(seed)
    res = _pass(parents, torch.full((n,), CTX), tp, tq, rule, g)
    first, second = res.tokens[:, 0].clone(), res.tokens[:, 1].clone()
    short = second < 0
    if bool(short.any()):  # continue from the emitted token with a fresh tree
        second[short] = _pass(parents, first[short], tp, tq, rule, g).tokens[:, 0]
    joint = tp[CTX].unsqueeze(1) * tp[:V]  # P(a, b) = p(a | ctx) p(b | a)
    return first * V + second, joint.reshape(-1)


RULES = {
    "recursive": (recursive_rejection, 100_000),
    "spectr": (spectr_kseq, 100_000),
    "importance_sampling": (importance_sampling_verify, 30_000),
}


@pytest.mark.parametrize("rule_name", list(RULES))
def test_tree_verification_is_exact_on_a_markov_model(stats, rule_name: str) -> None:
    rule, n = RULES[rule_name]
    pairs, joint = _first_two_tokens(BUSHY, rule, n, seed=1)
    stats.assert_follows(pairs, joint, f"{rule_name} tree: joint of the first two tokens")


def test_chain_tree_with_one_child_is_exact_speculative_sampling(stats) -> None:
    pairs, joint = _first_two_tokens(CHAIN, recursive_rejection, stats.N, seed=2)
    stats.assert_follows(pairs, joint, "chain: joint of the first two tokens")


def test_wrong_tree_walk_is_caught(stats) -> None:
    """Negative control: always emitting the first child's token (no verification) fails."""

    def trusting(p, q, drafts, g):
        return DraftChoice(token=drafts[:, 0], accepted_index=torch.zeros_like(drafts[:, 0]))

    pairs, joint = _first_two_tokens(BUSHY, trusting, 20_000, seed=3)
    assert stats.chi2_pvalue(pairs, joint) < stats.P_MIN


def test_greedy_tree_follows_the_argmax_path() -> None:
    tp, tq = _tables(4)
    best1 = int(tp[CTX].argmax())
    best2 = int(tp[best1].argmax())
    other = (best1 + 1) % V
    tokens = torch.tensor([[0, other, best1, 0, 0, best2, other]])
    state = torch.tensor([[CTX, other, best1, 0, 0, best2, other]])
    res = verify_tree(BUSHY, tokens, tp[state], tq[state], greedy_tree_rule)
    assert res.path[0, :2].tolist() == [2, 5]
    assert res.tokens[0].tolist() == [best1, best2, int(tp[best2].argmax())]
    assert res.num_accepted.tolist() == [2]


def test_ancestor_mask_and_depths() -> None:
    mask = ancestor_mask(BUSHY)
    expect = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0, 0],
            [1, 0, 1, 0, 0, 0, 0],
            [1, 1, 0, 1, 0, 0, 0],
            [1, 1, 0, 0, 1, 0, 0],
            [1, 0, 1, 0, 0, 1, 0],
            [1, 0, 1, 0, 0, 0, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(mask, expect)
    assert node_depths(BUSHY) == [0, 1, 1, 2, 2, 2, 2]
    assert torch.equal(ancestor_mask(CHAIN), torch.ones(3, 3, dtype=torch.bool).tril())


@pytest.mark.parametrize("parents", [[0, 0], [-1, 1], [-1, 0, 3, 1], []])
def test_bad_parent_lists_are_rejected(parents) -> None:
    with pytest.raises(InvalidRequestError, match="parent"):
        ancestor_mask(parents)


def test_shape_mismatch_names_the_expected_shapes() -> None:
    p = torch.full((1, 3, V), 1 / V)
    with pytest.raises(InvalidRequestError, match="for 7 nodes"):
        verify_tree(BUSHY, torch.zeros(1, 3, dtype=torch.long), p, p, recursive_rejection)
