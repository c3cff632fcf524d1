"""Train the judge of judge decoding from the target's own generations (CPU, about a minute).

Bachmann et al. label a draft token by whether the answer stays correct with it; with no task
labels here we use a proxy and say so: a token is acceptable when the target gives it at least
`--ratio` of its top token's probability at that position. Data: the target answers the draft
head's training prompts through the engine, a `--sampled-fraction` of them at `--temperature`
(the sampled tokens give the judge its negatives); each generated token y_t that is not the
target's argmax (the only drafts a judge can add) gives one row, (the target's last hidden
state after reading y_t, ok = p_t(y_t) >= ratio * max p_t). The
judge is a logistic regression on those rows (`JudgeHead.fit`); its delta is the lowest
threshold whose held-out precision reaches `--precision` (it fires only where it is right).

    python -m deploylab.engine.spec_decode.train_judge   # writes the shipped judge
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import torch

from deploylab.engine.spec.judge import JudgeHead
from deploylab.engine.spec_decode.judge import default_judge_path
from deploylab.engine.spec_decode.train_head import generations


@torch.no_grad()  # not inference mode: the rows feed the judge's autograd fit
def examples(rows: list[dict[str, Any]], model: Any, ratio: float) -> dict[str, torch.Tensor]:
    """(hidden after reading y_t, ok) for every generated token y_t that is not the target's
    argmax there (whose two hidden rows exist)."""
    feats, before, tokens = [], [], []
    for r in rows:
        hid, toks = r["hidden"], r["tokens"]
        for t in sorted(hid):
            if t + 1 in hid and t < len(toks):
                before.append(hid[t])
                feats.append(hid[t + 1])
                tokens.append(toks[t])
    h_before = torch.stack(before)
    y = torch.tensor(tokens)
    ok, top = [], []
    for chunk, ys in zip(h_before.split(512), y.split(512), strict=True):
        p = torch.softmax(model.compute_logits(chunk).float(), dim=-1)
        ok.append(p.gather(1, ys[:, None]).squeeze(1) >= ratio * p.max(dim=-1).values)
        top.append(p.argmax(dim=-1) == ys)
    # The judge matters only where the rule rejects: tokens that are not the target's argmax.
    keep = ~torch.cat(top)
    return {"hidden": torch.stack(feats).float()[keep], "ok": torch.cat(ok)[keep]}


@torch.inference_mode()
def pick_delta(
    judge: JudgeHead, test: dict[str, torch.Tensor], precision: float
) -> dict[str, float]:
    """The lowest delta (grid of 0.01) whose held-out precision reaches `precision`, with
    its precision and recall (delta 1.0, a judge that never fires, when none does)."""
    score = judge(test["hidden"])
    ok = test["ok"]
    for delta in [i / 100 for i in range(50, 100)]:
        fires = score > delta
        if int(fires.sum()) == 0:
            break
        prec = float((fires & ok).sum() / fires.sum())
        if prec >= precision:
            rec = float((fires & ok).sum() / ok.sum().clamp(min=1))
            return {"delta": delta, "precision": prec, "recall": rec}
    return {"delta": 1.0, "precision": 1.0, "recall": 0.0}


@torch.no_grad()
def auc(judge: JudgeHead, test: dict[str, torch.Tensor]) -> float:
    """Held-out ROC AUC: the chance that an acceptable row scores above an unacceptable one."""
    score, ok = judge(test["hidden"]), test["ok"]
    pos, neg = score[ok], score[~ok]
    if not len(pos) or not len(neg):
        return float("nan")
    return float((pos[:, None] > neg[None, :]).float().mean())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--out", default=None, help="default: the shipped judge's path")
    p.add_argument("--prompts", type=int, default=160, help="training prompts (+1/8 held out)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--ratio", type=float, default=0.5, help="proxy label: p(y) >= ratio * max p")
    p.add_argument("--precision", type=float, default=0.7, help="held-out precision for delta")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--sampled-fraction", type=float, default=0.75)
    p.add_argument("--l2", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=1)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    model, train_rows, held_rows = generations(args, args.temperature)
    data = examples(train_rows, model, args.ratio)
    test = examples(held_rows, model, args.ratio)
    print(f"{len(data['ok'])} training rows ({float(data['ok'].float().mean()):.2f} acceptable), "
          f"{len(test['ok'])} held out; generated in {time.perf_counter() - t0:.0f}s")  # fmt: skip
    judge = JudgeHead(data["hidden"].shape[1])
    loss = judge.fit(data["hidden"], data["ok"], l2=args.l2)
    chosen = pick_delta(judge, test, args.precision)
    judge.delta = chosen["delta"]
    minutes = (time.perf_counter() - t0) / 60
    area = auc(judge, test)
    print(f"held-out ROC AUC {area:.3f}")
    print(f"training loss {loss:.3f}; delta {chosen['delta']:.2f}: held-out precision "
          f"{chosen['precision']:.3f}, recall {chosen['recall']:.3f}; "
          f"{minutes:.1f} min")  # fmt: skip
    out = args.out or default_judge_path(args.model)
    extra = {
        "model": args.model,
        "label": f"p(y) >= {args.ratio} * max p (proxy)",
        "heldout_precision": f"{chosen['precision']:.4f}",
        "heldout_recall": f"{chosen['recall']:.4f}",
        "heldout_auc": f"{area:.4f}",
        "training_rows": str(len(data["ok"])),
        "args": " ".join(sys.argv[1:]) if argv is None else " ".join(argv),
    }
    judge.save(out, extra)
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
