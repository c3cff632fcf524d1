"""Speculative-decoding verification rules as batched PyTorch functions (p = target, q = draft).

One module per family: `single` (speculative sampling, greedy), `recursive` (SpecInfer/EAGLE
recursive rejection), `spectr` (SpecTr K-SEQ), `canonical` + `selection_lp` (Khisti et al.'s
importance-sampling selection, LP-optimal and truncated-LP selection), `optimal_bound`
(closed-form best acceptance), `cascades` (speculative cascades), `judge` (judge decoding),
`tree` (token-tree verification and the ancestor mask). See docs/speculative.md.
"""

from deploylab.engine.spec.canonical import (
    canonical_acceptance,
    canonical_verify,
    importance_sampling_verify,
    is_induced_proposal,
    is_select_probs,
)
from deploylab.engine.spec.cascades import (
    DeferralRule,
    cascade_acceptance,
    cascade_target,
    cascade_verify,
)
from deploylab.engine.spec.judge import JudgeHead, judge_verify
from deploylab.engine.spec.optimal_bound import optimal_acceptance_iid, subset_min_gap
from deploylab.engine.spec.recursive import recursive_acceptance, recursive_rejection
from deploylab.engine.spec.sampling import ChainResult, DraftChoice
from deploylab.engine.spec.selection_lp import (
    SelectionPlan,
    lp_verify,
    optimal_plan,
    truncated_plan,
)
from deploylab.engine.spec.single import (
    acceptance_probability,
    greedy_verify,
    point_mass_sampling,
    speculative_sampling,
)
from deploylab.engine.spec.spectr import spectr_acceptance, spectr_kseq, spectr_rho
from deploylab.engine.spec.tree import (
    TreeResult,
    ancestor_mask,
    greedy_tree_rule,
    node_depths,
    verify_tree,
)

__all__ = [
    "ChainResult",
    "DeferralRule",
    "DraftChoice",
    "JudgeHead",
    "SelectionPlan",
    "TreeResult",
    "acceptance_probability",
    "ancestor_mask",
    "canonical_acceptance",
    "canonical_verify",
    "cascade_acceptance",
    "cascade_target",
    "cascade_verify",
    "greedy_tree_rule",
    "greedy_verify",
    "importance_sampling_verify",
    "is_induced_proposal",
    "is_select_probs",
    "judge_verify",
    "lp_verify",
    "node_depths",
    "optimal_acceptance_iid",
    "optimal_plan",
    "point_mass_sampling",
    "recursive_acceptance",
    "recursive_rejection",
    "spectr_acceptance",
    "spectr_kseq",
    "spectr_rho",
    "speculative_sampling",
    "subset_min_gap",
    "truncated_plan",
    "verify_tree",
]
