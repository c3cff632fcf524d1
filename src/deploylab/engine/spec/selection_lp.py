"""Optimal and truncated draft selection by linear programming (Khisti et al. 2024).

The canonical decomposition's acceptance sum_y min(p(y), p_I(y)) is maximised over the
selection rule beta by a linear program (scipy's HiGHS): variables beta_{c,y} for each tuple
class c and each distinct token y in it, plus t_y <= p(y), t_y <= p_I(y); maximise sum t_y.
For i.i.d. drafts a class is a multiset (averaging any solution over draft orderings keeps it
optimal, so this loses nothing); for one drafter per draft it is an ordered tuple.

`optimal_plan` optimises over every tuple (small vocabularies). `truncated_plan` optimises
only the tuples made of the top-s tokens of q (O(s^2) variables for K = 2) and keeps the IS
weights for every other tuple, so optimal >= truncated >= IS by construction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linprog
from scipy.sparse import coo_matrix

from deploylab.engine.spec.canonical import (
    canonical_verify,
    is_induced_proposal,
    is_select_probs,
)
from deploylab.engine.spec.enumeration import multiset_log_count, multisets, ordered_tuples
from deploylab.engine.spec.multi_common import draft_dists
from deploylab.engine.spec.sampling import DraftChoice
from deploylab.errors import DeploylabError, InvalidRequestError


@dataclass
class SelectionPlan:
    """A selection rule for one (p, q) instance and its induced proposal.

    support: (s,) token ids whose tuples are optimised; keys: (C,) sorted class keys;
    beta: (C, s) selection probabilities over the support tokens per class. Tuples outside
    the optimised classes use the IS rule. p_induced: (V,) the induced proposal of the whole rule.
    """

    p: torch.Tensor
    q: torch.Tensor  # (V,) i.i.d. or (K, V)
    k: int
    support: torch.Tensor
    keys: torch.Tensor
    beta: torch.Tensor
    p_induced: torch.Tensor

    @property
    def iid(self) -> bool:
        """Whether the K drafts come i.i.d. from one drafter."""
        return self.q.dim() == 1

    @property
    def acceptance(self) -> float:
        """sum_y min(p(y), p_I(y)): probability that the selected draft is kept."""
        return float(torch.minimum(self.p, self.p_induced).sum())

    def ranks(self, drafts: torch.Tensor) -> torch.Tensor:
        """Position of each draft token in `support`, or -1 outside it."""
        s = self.support.shape[0]
        rank = torch.full((self.p.shape[0],), -1, dtype=torch.long, device=drafts.device)
        rank[self.support.to(drafts.device)] = torch.arange(s, device=drafts.device)
        return rank[drafts.to(torch.long)]

    def class_keys(self, drafts: torch.Tensor) -> torch.Tensor:
        """(N, K) drafts -> (N,) class key, or -1 when a draft lies outside `support`."""
        s = self.support.shape[0]
        r = self.ranks(drafts)
        if self.iid:
            r = r.sort(dim=1).values
        base = s ** torch.arange(self.k, device=drafts.device)
        key = (r.clamp_min(0) * base).sum(1)
        return torch.where((r < 0).any(1), torch.full_like(key, -1), key)

    def select_probs(self, drafts: torch.Tensor) -> torch.Tensor:
        """(N, K) drafts -> (N, K) probability of selecting each draft position."""
        n, k = drafts.shape
        d = drafts.to(torch.long)
        qk = self.q.unsqueeze(0).expand(k, -1) if self.iid else self.q
        fallback = is_select_probs(
            self.p.unsqueeze(0).expand(n, -1), qk.unsqueeze(0).expand(n, k, -1), d
        )
        keys = self.keys.to(d.device)
        if keys.numel() == 0:
            return fallback
        key = self.class_keys(d)
        pos = torch.searchsorted(keys, key).clamp(max=keys.shape[0] - 1)
        found = (key >= 0) & (keys[pos] == key)
        tok_prob = self.beta.to(d.device)[pos].gather(1, self.ranks(d).clamp_min(0))
        count = (d.unsqueeze(2) == d.unsqueeze(1)).sum(2)  # copies of each draft's token
        lp = tok_prob / count
        return torch.where(found.unsqueeze(1), lp, fallback)


def _classes(support: list[int], k: int, iid: bool) -> list[tuple[int, ...]]:
    if iid:
        return multisets(support, k)
    grid = ordered_tuples(len(support), k)
    return [tuple(support[i] for i in row) for row in grid.tolist()]


def _class_prob(cls: tuple[int, ...], q: np.ndarray, iid: bool) -> float:
    if iid:
        logs = [math.log(q[t]) if q[t] > 0 else -math.inf for t in cls]
        total = multiset_log_count(cls) + sum(logs)
        return math.exp(total) if total > -math.inf else 0.0
    return float(np.prod([q[i, t] for i, t in enumerate(cls)]))


def _is_beta(cls: tuple[int, ...], p: np.ndarray, q: np.ndarray, iid: bool) -> dict[int, float]:
    qx = np.array([q[t] if iid else q[i, t] for i, t in enumerate(cls)])
    px = np.array([p[t] for t in cls])
    w = np.where(qx > 0, px / np.where(qx > 0, qx, 1.0), 0.0)
    share = w / w.sum() if w.sum() > 0 else np.full(len(cls), 1.0 / len(cls))
    out: dict[int, float] = {}
    for t, a in zip(cls, share, strict=True):
        out[t] = out.get(t, 0.0) + float(a)
    return out


def build_plan(
    p: torch.Tensor,
    q: torch.Tensor,
    k: int,
    support: list[int],
    is_proposal: torch.Tensor | None = None,
) -> SelectionPlan:
    """Solve the selection LP over tuples of `support` tokens; IS weights elsewhere.

    `is_proposal` (V,) is the IS rule's p_I when the caller already has it (saves the
    quadrature over a large vocabulary).
    """
    iid = q.dim() == 1
    v = p.shape[0]
    p_np = p.detach().to(torch.float64).cpu().numpy()
    q_np = q.detach().to(torch.float64).cpu().numpy()
    if is_proposal is None:
        p64, q64 = p.unsqueeze(0).to(torch.float64), q.unsqueeze(0).to(torch.float64)
        is_pi = is_induced_proposal(p64, q64, k)[0]
    else:
        is_pi = is_proposal.detach().to(torch.float64)
    fixed = is_pi.cpu().numpy().copy()
    full = len(support) == v
    classes = []
    for cls in _classes(support, k, iid):
        prob = _class_prob(cls, q_np, iid)
        if prob <= 0:
            continue
        classes.append((cls, prob, sorted(set(cls))))
        if not full:
            for t, a in _is_beta(cls, p_np, q_np, iid).items():
                fixed[t] -= prob * a
    if full:
        fixed[:] = 0.0
    fixed = np.clip(fixed, 0.0, None)
    beta = _solve(classes, support, p_np, fixed)
    # Recompute p_I from the beta we will actually sample with (exactness needs consistency).
    p_ind = fixed.copy()
    s = len(support)
    rank = {t: i for i, t in enumerate(support)}
    keys, rows = [], []
    for (cls, prob, _), b in zip(classes, beta, strict=True):
        for t, a in b.items():
            p_ind[t] += prob * a
        ranks = [rank[t] for t in cls] if not iid else sorted(rank[t] for t in cls)
        keys.append(sum(r * s**i for i, r in enumerate(ranks)))
        row = np.zeros(s)
        for t, a in b.items():
            row[rank[t]] = a
        rows.append(row)
    if not full:
        outside = np.ones(v, dtype=bool)
        outside[support] = False
        p_ind[outside] = is_pi.cpu().numpy()[outside]
    order = np.argsort(keys) if keys else np.array([], dtype=np.int64)
    dev, dt = p.device, p.dtype
    return SelectionPlan(
        p=p,
        q=q,
        k=k,
        support=torch.tensor(support, dtype=torch.long, device=dev),
        keys=torch.tensor(np.asarray(keys, dtype=np.int64)[order], dtype=torch.long, device=dev),
        beta=torch.tensor(np.asarray(rows).reshape(-1, s)[order], dtype=dt, device=dev),
        p_induced=torch.tensor(p_ind, dtype=dt, device=dev),
    )


def _solve(
    classes: list[tuple[tuple[int, ...], float, list[int]]],
    support: list[int],
    p: np.ndarray,
    fixed: np.ndarray,
) -> list[dict[int, float]]:
    """max sum_y t_y  s.t.  sum_y beta_cy = 1,  t_y <= fixed_y + sum_c Q_c beta_cy,  t_y <= p_y."""
    var = [(ci, t) for ci, (_, _, toks) in enumerate(classes) for t in toks]
    nb = len(var)
    tpos = {t: nb + i for i, t in enumerate(support)}
    n = nb + len(support)
    eq_r, eq_c = [ci for ci, _ in var], list(range(nb))
    ub_r, ub_c, ub_v = [], [], []
    for j, (ci, t) in enumerate(var):
        ub_r.append(tpos[t] - nb)
        ub_c.append(j)
        ub_v.append(-classes[ci][1])
    for i, t in enumerate(support):
        ub_r.append(i)
        ub_c.append(tpos[t])
        ub_v.append(1.0)
    cost = np.zeros(n)
    cost[nb:] = -1.0
    a_eq = coo_matrix((np.ones(nb), (eq_r, eq_c)), shape=(len(classes), n))
    a_ub = coo_matrix((ub_v, (ub_r, ub_c)), shape=(len(support), n))
    bounds = [(0.0, 1.0)] * nb + [(0.0, float(p[t])) for t in support]
    res = linprog(
        cost,
        A_ub=a_ub.tocsr(),
        b_ub=fixed[support],
        A_eq=a_eq.tocsr(),
        b_eq=np.ones(len(classes)),
        bounds=bounds,
        method="highs",
    )
    if not res.success:
        raise DeploylabError(f"the selection LP failed ({res.message}); this is a bug.")
    x = np.clip(res.x[:nb], 0.0, 1.0)
    out: list[dict[int, float]] = [{} for _ in classes]
    for (ci, t), val in zip(var, x, strict=True):
        out[ci][t] = float(val)
    for d in out:
        total = sum(d.values())
        for t in d:
            d[t] /= total
    return out


def _check_instance(p: torch.Tensor, q: torch.Tensor, k: int) -> None:
    if p.dim() != 1 or q.dim() not in (1, 2) or q.shape[-1] != p.shape[0]:
        raise InvalidRequestError(
            "a selection plan is per instance: p (V,), q (V,) for i.i.d. drafts or (K, V).",
            param="q",
        )
    if q.dim() == 2 and q.shape[0] != k:
        raise InvalidRequestError(f"q has {q.shape[0]} drafter rows but K = {k}.", param="q")


def optimal_plan(p: torch.Tensor, q: torch.Tensor, k: int) -> SelectionPlan:
    """The LP-optimal selection rule over all tuples (small vocabularies only)."""
    _check_instance(p, q, k)
    return build_plan(p, q, k, list(range(p.shape[0])))


def truncated_plan(
    p: torch.Tensor,
    q: torch.Tensor,
    k: int,
    s: int,
    is_proposal: torch.Tensor | None = None,
) -> SelectionPlan:
    """LP over tuples of the top-s tokens of q (mean of q_k for distinct drafters); IS elsewhere."""
    _check_instance(p, q, k)
    if not 1 <= s <= p.shape[0]:
        raise InvalidRequestError(f"s must be in [1, V={p.shape[0]}]; got {s}.", param="s")
    score = q if q.dim() == 1 else q.mean(0)
    top = torch.topk(score, s).indices.sort().values.tolist()
    return build_plan(p, q, k, top, is_proposal)


def lp_verify(
    p: torch.Tensor,
    q: torch.Tensor,
    drafts: torch.Tensor,
    generator: torch.Generator | None = None,
    s: int | None = None,
) -> DraftChoice:
    """Canonical decomposition with the LP selection rule, one LP per row (s=None: optimal)."""
    qk = draft_dists(p, q, drafts)
    k = drafts.shape[1]
    sel, p_ind = [], []
    for i in range(p.shape[0]):
        qi = q[i] if q.dim() == 2 else qk[i]
        plan = optimal_plan(p[i], qi, k) if s is None else truncated_plan(p[i], qi, k, s)
        sel.append(plan.select_probs(drafts[i : i + 1]))
        p_ind.append(plan.p_induced)
    return canonical_verify(p, drafts, torch.cat(sel), torch.stack(p_ind), generator)
