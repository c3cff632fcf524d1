"""Expected tokens per target pass for each speculative verification rule, K = 1, 2, 4, 8.

Two sources of (p, q) = (target, draft) next-token distributions:
  (a) synthetic: p = softmax(z), q = softmax(z + sigma * noise) at controlled divergence;
  (b) real: SmolLM2-135M-Instruct as target over text it sampled itself, with two drafts
      built from it (its first k layers + final norm + head; the target at a higher
      temperature) - see spec_rules_model.py.

For every position the per-token acceptance alpha of each rule is computed exactly (closed
forms, the IS quadrature, one LP per position for the truncated LP). Tokens per target pass
with gamma drafts per pass is then 1 + sum_{j=1..gamma} prod_{i<j} alpha_{t+i}, averaged over
windows of consecutive positions: the model where every depth offers K fresh drafts (a K-ary
tree on the accepted path), with positions treated as independent. A Monte Carlo run of the
sampling functions themselves cross-checks the analytic acceptances.

    .venv/bin/python benchmarks/spec_rules.py                 # full run, prints markdown
    .venv/bin/python benchmarks/spec_rules.py --quick         # synthetic only, small
"""

from __future__ import annotations

import argparse
import platform
import time
from dataclasses import dataclass, field

import torch

from deploylab.engine.spec import (
    canonical_acceptance,
    canonical_verify,
    cascade_acceptance,
    cascade_target,
    is_select_probs,
    optimal_acceptance_iid,
    recursive_acceptance,
    recursive_rejection,
    spectr_acceptance,
    spectr_kseq,
    spectr_rho,
    truncated_plan,
)
from deploylab.engine.spec.induced import iid_importance_proposals

KS = [1, 2, 4, 8]
TRUNC_S = {1: 8, 2: 10, 4: 6, 8: 4}  # top-s tokens optimised by the truncated LP
MULTI_RULES = [
    "SpecInfer (recursive)",
    "SpecTr K-SEQ",
    "IS (weights p/q)",
    "truncated LP",
    "optimal",
]
CASCADES = [("chow", 0.3), ("diff", 0.1), ("opt", 0.5), ("v1", 0.1), ("v2", 0.1), ("v3", 0.3)]


@dataclass
class Setting:
    """One (p, q) source: segments of consecutive positions, each (T, V) float64."""

    name: str
    segments: list[tuple[torch.Tensor, torch.Tensor]]
    alphas: dict[str, dict[int, list[torch.Tensor]]] = field(default_factory=dict)
    extra: dict[str, list[torch.Tensor]] = field(default_factory=dict)


def synthetic(n: int, v: int, sigma: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """p = softmax(z), q = softmax(z + sigma * eps), z and eps standard normal times 2."""
    g = torch.Generator().manual_seed(seed)
    z = 2.0 * torch.randn(n, v, generator=g, dtype=torch.float64)
    eps = 2.0 * torch.randn(n, v, generator=g, dtype=torch.float64)
    return torch.softmax(z, -1), torch.softmax(z + sigma * eps, -1)


def per_position(p: torch.Tensor, q: torch.Tensor) -> dict[str, dict[int, torch.Tensor]]:
    """Exact per-position acceptance of each multi-draft rule for every K."""
    out: dict[str, dict[int, torch.Tensor]] = {r: {} for r in MULTI_RULES}
    p_is = iid_importance_proposals(p, q, KS)
    for k in KS:
        out["SpecInfer (recursive)"][k] = recursive_acceptance(p, q, k)
        out["SpecTr K-SEQ"][k] = spectr_acceptance(p, q, k)
        out["IS (weights p/q)"][k] = canonical_acceptance(p, p_is[k])
        out["optimal"][k] = optimal_acceptance_iid(p, q, k)
        trunc = [
            truncated_plan(p[t], q[t], k, TRUNC_S[k], is_proposal=p_is[k][t]).acceptance
            for t in range(p.shape[0])
        ]
        out["truncated LP"][k] = torch.tensor(trunc, dtype=p.dtype)
    return out


def tokens_per_pass(segments: list[torch.Tensor], gamma: int) -> float:
    """Mean over windows of 1 + sum_j prod_{i<j} alpha_{t+i} (gamma drafts per pass)."""
    vals = []
    for a in segments:
        for t in range(0, a.shape[0] - gamma + 1):
            run = torch.cumprod(a[t : t + gamma], 0)
            vals.append(1.0 + float(run.sum()))
    return sum(vals) / max(len(vals), 1)


def evaluate(setting: Setting) -> None:
    """Fill setting.alphas (rule -> K -> per-segment alphas) and the single-draft extras."""
    for p, q in setting.segments:
        res = per_position(p, q)
        for rule, by_k in res.items():
            for k, a in by_k.items():
                setting.alphas.setdefault(rule, {}).setdefault(k, []).append(a)
        greedy = (p.argmax(-1) == q.argmax(-1)).to(p.dtype)
        setting.extra.setdefault("greedy (argmax match)", []).append(greedy)
        for rule, alpha in CASCADES:
            key = f"cascade {rule} a={alpha}"
            setting.extra.setdefault(key, []).append(cascade_acceptance(p, q, rule, alpha))
            pi = cascade_target(p, q, rule, alpha)
            tv = 0.5 * (pi - p).abs().sum(-1)
            setting.extra.setdefault(key + " TV(pi,p)", []).append(tv)


def mc_check(p: torch.Tensor, q: torch.Tensor, k: int, draws: int, seed: int) -> dict[str, tuple]:
    """Run the sampling functions on drafts drawn from q; empirical vs analytic acceptance."""
    g = torch.Generator().manual_seed(seed)
    p_is = iid_importance_proposals(p, q, [k])[k]
    kept = {"SpecInfer (recursive)": 0.0, "SpecTr K-SEQ": 0.0, "IS (weights p/q)": 0.0}
    for t in range(p.shape[0]):
        pt, qt = p[t].float().expand(draws, -1), q[t].float().expand(draws, -1)
        d = torch.multinomial(q[t].float(), draws * k, replacement=True, generator=g)
        d = d.reshape(draws, k)
        kept["SpecInfer (recursive)"] += recursive_rejection(pt, qt, d, g).accepted.sum().item()
        rho = spectr_rho(p[t : t + 1], q[t : t + 1], k).float().expand(draws)
        kept["SpecTr K-SEQ"] += spectr_kseq(pt, qt, d, g, rho=rho).accepted.sum().item()
        sel = is_select_probs(pt, qt.unsqueeze(1).expand(draws, k, -1), d)
        pi = p_is[t].float().expand(draws, -1)
        kept["IS (weights p/q)"] += canonical_verify(pt, d, sel, pi, g).accepted.sum().item()
    n = p.shape[0] * draws
    analytic = {
        "SpecInfer (recursive)": recursive_acceptance(p, q, k).mean().item(),
        "SpecTr K-SEQ": spectr_acceptance(p, q, k).mean().item(),
        "IS (weights p/q)": canonical_acceptance(p, p_is).mean().item(),
    }
    return {r: (kept[r] / n, analytic[r], n) for r in kept}


def _mean(segs: list[torch.Tensor]) -> float:
    return torch.cat(segs).mean().item()


def report(setting: Setting, gamma: int) -> list[str]:
    """Markdown table: per-token acceptance and tokens per pass, plus the ordering check."""
    lines = [f"#### {setting.name}", ""]
    head = "| rule | " + " | ".join(f"K={k}: alpha / tok/pass" for k in KS) + " |"
    lines += [head, "|---|" + "---:|" * len(KS)]
    for rule in MULTI_RULES:
        cells = []
        for k in KS:
            segs = setting.alphas[rule][k]
            cells.append(f"{_mean(segs):.4f} / {tokens_per_pass(segs, gamma):.3f}")
        lines.append(f"| {rule} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("| single draft (K=1), not exact unless noted | alpha | tok/pass | TV(pi, p) |")
    lines.append("|---|---:|---:|---:|")
    ss = setting.alphas["SpecInfer (recursive)"][1]
    lines.append(
        f"| speculative sampling (exact) | {_mean(ss):.4f} | {tokens_per_pass(ss, gamma):.3f} | 0 |"
    )
    g = setting.extra["greedy (argmax match)"]
    lines.append(
        f"| greedy (exact for greedy decoding) | {_mean(g):.4f} | "
        f"{tokens_per_pass(g, gamma):.3f} | - |"
    )
    for rule, alpha in CASCADES:
        key = f"cascade {rule} a={alpha}"
        a = setting.extra[key]
        tv = _mean(setting.extra[key + " TV(pi,p)"])
        lines.append(f"| {key} | {_mean(a):.4f} | {tokens_per_pass(a, gamma):.3f} | {tv:.4f} |")
    lines += ["", *ordering(setting), ""]
    return lines


def ordering(setting: Setting) -> list[str]:
    """Check optimal >= IS-type >= SpecTr >= SpecInfer on means and per position."""
    out = []
    chain = ["optimal", "truncated LP", "IS (weights p/q)", "SpecTr K-SEQ", "SpecInfer (recursive)"]
    for k in KS[1:]:
        means = {r: _mean(setting.alphas[r][k]) for r in chain}
        order = " >= ".join(f"{r} {means[r]:.4f}" for r in sorted(chain, key=lambda r: -means[r]))
        flips = []
        for hi, lo in zip(chain, chain[1:], strict=False):
            a = torch.cat(setting.alphas[hi][k])
            b = torch.cat(setting.alphas[lo][k])
            # 1e-6: the LP solver's feasibility tolerance (HiGHS default 1e-7) plus rounding.
            flips.append(f"{hi} < {lo} at {int((a < b - 1e-6).sum())}/{a.numel()} positions")
        out.append(f"- K={k}: {order}. Per position: " + "; ".join(flips) + ".")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--positions", type=int, default=64, help="new tokens per prompt (real)")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--synthetic-positions", type=int, default=200)
    ap.add_argument("--vocab", type=int, default=1000, help="synthetic vocabulary size")
    ap.add_argument("--gamma", type=int, default=4, help="draft tokens per target pass")
    ap.add_argument("--draft-layers", type=int, default=24)
    ap.add_argument("--draft-temperature", type=float, default=1.6)
    ap.add_argument("--mc-draws", type=int, default=32, help="Monte Carlo draft sets per position")
    ap.add_argument("--mc-positions", type=int, default=64, help="positions per setting in MC")
    ap.add_argument("--quick", action="store_true", help="synthetic only, 40 positions")
    args = ap.parse_args()
    start, cpu0 = time.perf_counter(), time.process_time()
    phases: list[str] = []

    def phase(name: str, t0: float, c0: float) -> None:
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        phases.append(f"{name} {wall:.0f} s wall / {cpu:.0f} s CPU")

    torch.set_default_dtype(torch.float32)
    n_syn = 40 if args.quick else args.synthetic_positions
    settings = []
    for sigma in (0.5, 1.0, 2.0):
        p, q = synthetic(n_syn, args.vocab, sigma, seed=int(sigma * 10))
        tv = 0.5 * (p - q).abs().sum(-1).mean().item()
        name = f"synthetic V={args.vocab}, sigma={sigma} (mean TV {tv:.3f})"
        settings.append(Setting(name, [(p, q)]))
    judge_lines: list[str] = []
    if not args.quick:
        from spec_rules_model import real_settings

        t0, c0 = time.perf_counter(), time.process_time()
        real, judge_lines = real_settings(
            args.prompts, args.positions, args.draft_layers, args.draft_temperature
        )
        settings += [Setting(name, segs) for name, segs in real]
        phase("model load + generation + judge", t0, c0)
    lines = [
        f"date {time.strftime('%Y-%m-%d')}, device CPU ({platform.processor() or 'cpu'}, "
        f"{torch.get_num_threads()} threads), torch {torch.__version__}, gamma={args.gamma}",
        "",
    ]
    t0, c0 = time.perf_counter(), time.process_time()
    for s in settings:
        evaluate(s)
        lines += report(s, args.gamma)
    phase("exact acceptances (closed forms, IS quadrature, truncated LPs)", t0, c0)
    lines += ["#### Monte Carlo check of the sampling functions (K=4)", ""]
    lines += [
        f"First {args.mc_positions} positions of each setting, {args.mc_draws} draft sets each; "
        "analytic = mean exact acceptance over the same positions.",
        "",
        "| setting | rule | empirical | analytic | draft sets |",
        "|---|---|---:|---:|---:|",
    ]
    t0, c0 = time.perf_counter(), time.process_time()
    for s in settings:
        p = torch.cat([a for a, _ in s.segments])[: args.mc_positions]
        q = torch.cat([b for _, b in s.segments])[: args.mc_positions]
        for rule, (emp, ana, n) in mc_check(p, q, 4, args.mc_draws, seed=7).items():
            lines.append(f"| {s.name} | {rule} | {emp:.4f} | {ana:.4f} | {n} |")
    phase("Monte Carlo check", t0, c0)
    lines += ["", *judge_lines]
    phase("total", start, cpu0)
    lines.append("time: " + "; ".join(phases))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
