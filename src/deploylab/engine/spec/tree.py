"""Token trees: verify a tree of drafts in one target pass and build its attention mask.

Node 0 is the root (the last context token); nodes 1..N-1 are draft tokens, each with a
parent index smaller than its own. p[:, n] is the target's next-token distribution after
node n (for the root: after the context), q[:, n] the draft distribution node n's children
were sampled from (i.i.d.). Verification walks from the root: at each node a multi-draft rule
picks one child or emits a fresh token; the walk ends there, or at a leaf with a bonus token.
With an exact rule (recursive rejection, SpecTr, IS) the emitted tokens follow the target.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from deploylab.engine.spec._checks import check_probs, check_same_device
from deploylab.engine.spec.sampling import DraftChoice, sample_categorical
from deploylab.errors import InvalidRequestError

# rule(p (b, V), q (b, V), drafts (b, K), generator) -> DraftChoice
TreeRule = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Generator | None], DraftChoice]


def check_parents(parents: list[int] | torch.Tensor) -> list[int]:
    """Validate parent indices (root first, parents before children); return them as a list."""
    par = parents.tolist() if isinstance(parents, torch.Tensor) else list(parents)
    if not par or par[0] != -1:
        raise InvalidRequestError(
            "parents[0] must be -1: node 0 is the root (the last context token).", param="parents"
        )
    for n, a in enumerate(par[1:], start=1):
        if not 0 <= a < n:
            raise InvalidRequestError(
                f"node {n} has parent {a}; every parent index must be in [0, {n}) so the "
                "tree is listed in topological order.",
                param="parents",
            )
    return par


def ancestor_mask(
    parents: list[int] | torch.Tensor, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """(N, N) bool: mask[i, j] is True when node j is node i itself or one of its ancestors.

    This is the tree-attention mask: a draft token may attend only to its own path.
    """
    par = check_parents(parents)
    n = len(par)
    mask = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        mask[i, i] = True
        if par[i] >= 0:
            mask[i] |= mask[par[i]]
    return mask.to(device)


def node_depths(parents: list[int] | torch.Tensor) -> list[int]:
    """Depth of each node (root = 0): the position offset used for its rotary embedding."""
    par = check_parents(parents)
    depth = [0] * len(par)
    for n in range(1, len(par)):
        depth[n] = depth[par[n]] + 1
    return depth


@dataclass
class TreeResult:
    """Outcome of verifying a token tree per batch row.

    tokens: (B, max_depth + 1) emitted tokens padded with -1; path: (B, max_depth + 1) the
    kept draft nodes in order (the root is not listed), padded with -1; num_accepted: (B,)
    drafts kept, so each row emits num_accepted + 1 tokens.
    """

    tokens: torch.Tensor
    path: torch.Tensor
    num_accepted: torch.Tensor


def verify_tree(
    parents: list[int] | torch.Tensor,
    tokens: torch.Tensor,
    p: torch.Tensor,
    q: torch.Tensor,
    rule: TreeRule,
    generator: torch.Generator | None = None,
) -> TreeResult:
    """Walk the tree from the root applying `rule` at every branching.

    parents: (N,) shared by the batch; tokens: (B, N) (tokens[:, 0] is ignored); p, q: (B, N, V).
    """
    par = check_parents(parents)
    n_nodes = len(par)
    check_probs("p", p, ndim=3)
    check_probs("q", q, ndim=3)
    b, n, v = p.shape
    if n != n_nodes or tuple(q.shape) != (b, n, v) or tuple(tokens.shape) != (b, n):
        raise InvalidRequestError(
            f"for {n_nodes} nodes pass tokens (B, {n_nodes}) and p, q (B, {n_nodes}, V); got "
            f"tokens {tuple(tokens.shape)}, p {tuple(p.shape)}, q {tuple(q.shape)}.",
            param="tokens",
        )
    check_same_device(p=p, q=q, tokens=tokens)
    children: list[list[int]] = [[] for _ in range(n)]
    for node, a in enumerate(par[1:], start=1):
        children[a].append(node)
    depth = max(node_depths(par))
    dev = p.device
    out_tok = torch.full((b, depth + 1), -1, dtype=torch.long, device=dev)
    out_path = torch.full((b, depth + 1), -1, dtype=torch.long, device=dev)
    current = torch.zeros(b, dtype=torch.long, device=dev)
    active = torch.ones(b, dtype=torch.bool, device=dev)
    count = torch.zeros(b, dtype=torch.long, device=dev)
    tok = tokens.to(torch.long)
    for _ in range(depth + 1):
        if not bool(active.any()):
            break
        next_node = current.clone()
        for node in torch.unique(current[active]).tolist():
            rows = torch.nonzero(active & (current == node)).squeeze(1)
            kids = children[node]
            if not kids:
                emitted = sample_categorical(p[rows, node], generator)
                out_tok[rows, count[rows]] = emitted
                active[rows] = False
                continue
            kid_t = torch.tensor(kids, device=dev)
            choice = rule(p[rows, node], q[rows, node], tok[rows][:, kid_t], generator)
            took = choice.accepted_index >= 0
            out_tok[rows, count[rows]] = choice.token
            chosen = kid_t[choice.accepted_index.clamp_min(0)]
            out_path[rows[took], count[rows[took]]] = chosen[took]
            next_node[rows[took]] = chosen[took]
            active[rows[~took]] = False
        count = count + active.to(torch.long)
        current = next_node
    return TreeResult(tokens=out_tok, path=out_path, num_accepted=(out_path >= 0).sum(1))


def greedy_tree_rule(
    p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor, generator: torch.Generator | None
) -> DraftChoice:
    """Greedy rule for trees: keep the first child equal to argmax p, else emit argmax p."""
    best = p.argmax(-1)
    hit = drafts.to(torch.long) == best.unsqueeze(1)
    idx = torch.where(hit.any(1), hit.to(torch.long).argmax(1), torch.full_like(best, -1))
    return DraftChoice(token=best, accepted_index=idx)
