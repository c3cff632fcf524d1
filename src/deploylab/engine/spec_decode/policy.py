"""The adaptive k policy: how many drafts each sequence verifies this step.

Each sequence i has a running per-token acceptance rate α_i (drafts are kept in order, so with
k drafts it emits 1 + Σ_{j≤k} α_i^j tokens on average). A step of B decoding sequences costs
a + b·(B + Σk_i) + c·#{k_i > 0} seconds (`CostModel`). The policy maximises the step's expected
tokens per second over all k_i ≤ their limits, by Dinkelbach's method: for a rate λ, each
sequence independently takes the smallest k maximising Σ_{j≤k} α^j − λ·(b·k + c·[k > 0]);
λ is then set to the rate those ks reach, until it stops growing (finitely many steps).
Consequences (tested): k_i = 0 whenever its expected gain does not pay for its cost, and for
fixed costs no k_i grows as the batch grows (the optimal rate λ* only rises with B).
"""

from __future__ import annotations

from collections.abc import Sequence as Seq

from deploylab.engine.spec_decode.cost import CostModel


def expected_accepted(alpha: float, k: int) -> float:
    """Expected accepted drafts out of k at per-token acceptance alpha: Σ_{j=1..k} α^j."""
    return sum(alpha**j for j in range(1, k + 1))


def _best_k(alpha: float, limit: int, lam: float, b: float, c: float) -> int:
    best_k, best, gain = 0, 0.0, 0.0
    for k in range(1, limit + 1):
        gain += alpha**k
        value = gain - lam * (b * k + c)
        if value > best + 1e-12:
            best_k, best = k, value
    return best_k


def step_rate(
    alphas: Seq[float], ks: Seq[int], num_decodes: int, a: float, b: float, c: float
) -> float:
    """Expected tokens per second of a step with these drafts."""
    tokens = num_decodes + sum(expected_accepted(x, k) for x, k in zip(alphas, ks, strict=True))
    seconds = a + b * (num_decodes + sum(ks)) + c * sum(1 for k in ks if k)
    return tokens / seconds


def choose_ks(
    alphas: Seq[float], limits: Seq[int], num_decodes: int, a: float, b: float, c: float
) -> list[int]:
    """Drafts per candidate sequence maximising the step's expected tokens per second;
    `num_decodes` counts every decoding sequence of the step (candidates included)."""
    ks = [0] * len(alphas)
    lam = step_rate(alphas, ks, num_decodes, a, b, c)
    for _ in range(64):
        new = [_best_k(x, n, lam, b, c) for x, n in zip(alphas, limits, strict=True)]
        rate = step_rate(alphas, new, num_decodes, a, b, c)
        if rate <= lam * (1 + 1e-12):
            break
        ks, lam = new, rate
    return ks


class AcceptanceTracker:
    """Per-sequence per-token acceptance (geometric model: accepted / (accepted +
    rejections)), shrunk toward the engine-wide rate for sequences with little history."""

    def __init__(self, prior: float = 0.5, prior_weight: float = 2.0) -> None:
        self.prior = prior
        self.prior_weight = prior_weight
        self.counts: dict[tuple[str, int], tuple[int, int]] = {}
        self.total = (0, 0)

    def rate(self, key: tuple[str, int]) -> float:
        """Estimated probability that this sequence's next draft token is accepted."""
        ta, tr = self.total
        w = self.prior_weight
        glob = (ta + self.prior * w) / (ta + tr + w)
        acc, rej = self.counts.get(key, (0, 0))
        return (acc + glob * w) / (acc + rej + w)

    def record(self, key: tuple[str, int], drafted: int, accepted: int) -> None:
        """One verification: `accepted` of `drafted` drafts kept (a rejection if fewer)."""
        rejected = int(accepted < drafted)
        acc, rej = self.counts.get(key, (0, 0))
        self.counts[key] = (acc + accepted, rej + rejected)
        ta, tr = self.total
        self.total = (ta + accepted, tr + rejected)

    def forget_except(self, keys: set[tuple[str, int]]) -> None:
        """Drop the history of sequences no longer running."""
        self.counts = {k: v for k, v in self.counts.items() if k in keys}


class AdaptivePolicy:
    """Chooses each step's per-sequence k from the cost model and the acceptance rates."""

    def __init__(self, cost: CostModel, tracker: AcceptanceTracker | None = None) -> None:
        self.cost = cost
        self.tracker = tracker or AcceptanceTracker()

    def choose(self, keys: Seq[tuple[str, int]], limits: Seq[int], num_decodes: int) -> list[int]:
        """ks (each <= its limit) for the candidate sequences `keys`."""
        a, b, c = self.cost.coefficients
        alphas = [self.tracker.rate(key) for key in keys]
        return choose_ks(alphas, limits, num_decodes, a, b, c)
