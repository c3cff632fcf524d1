"""Which draft head could reach the issue's 1.5x on chat? Offline agreement of head variants.

The shipped head (`spec_decode/head.py`) is an MLP on the target's last hidden state. This
script measures, on the same data, what EAGLE's and EAGLE-3's richer inputs would buy:

- `mlp` on `final`: the shipped shape (fc on [h; e], one residual SiLU block);
- `mlp` on several layers (`--layers 12,24,final`): the residual streams after those layers
  fused by a linear layer, EAGLE-3's low/mid/high features (`--normalize`: each one RMS-scaled);
- `attn`: one decoder layer of the target's shape (started from its last layer's weights)
  over the sequence of (feature, next token) inputs, EAGLE's head, with a second step trained
  on its own output (EAGLE-3's training-time test: the second query sees the first pass's keys
  before it and its own).

`generate` has the target answer `train_head`'s templated prompts (480 train, 60 held out,
three quarters greedy) and the speculative benchmark's 8 chat prompts (greedy, evaluation
only), then runs every answer teacher-forced through the model to keep the residual stream
after the chosen layers. `train` fits one variant and prints first-draft agreement with the
target's greedy token and second-draft agreement given a correct first, on the held-out
prompts and on the chat prompts. CPU, minutes per variant.

    python benchmarks/head_variants.py generate --out /tmp/heads.pt
    python benchmarks/head_variants.py train --data /tmp/heads.pt --variant mlp --layers final
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))

LAYERS = (6, 12, 18, 24)  # residual streams kept besides the final (normed) hidden state


def _dense_features(model: Any, tokens: list[int]) -> dict[Any, torch.Tensor]:
    """Teacher-forced forward of one sequence: residual stream after LAYERS, final hidden."""
    m = model.model
    h = m.embed_tokens(torch.tensor(tokens)[None])
    cos, sin = m.rotary_emb(torch.arange(len(tokens)), h.dtype)
    feats: dict[Any, torch.Tensor] = {}
    for i, layer in enumerate(m.layers):
        h = layer(h, cos, sin)
        if i + 1 in LAYERS:
            feats[i + 1] = h[0].clone()
    feats["final"] = m.norm(h)[0]
    return feats


@torch.inference_mode()
def generate(args: argparse.Namespace) -> None:
    """Answers and their features for the train, held-out and chat sets."""
    from deploylab.engine import LLM, SamplingParams
    from deploylab.engine.spec_decode import train_head
    from speculative import CHAT

    t0 = time.perf_counter()
    head_args = train_head.parse_args(["--prompts", str(args.prompts), "--threads", "2"])
    model, train_rows, held_rows = train_head.generations(head_args)

    def pack(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            {
                "tokens": r["tokens"],
                "start": min(r["hidden"]),
                "feats": _dense_features(model, r["tokens"]),
            }
            for r in rows
            if r["hidden"]
        ]

    llm = LLM(head_args.model, device="cpu", dtype="float32", max_num_seqs=8, kv_cache_gib=0.5)
    convs = [[{"role": "user", "content": t}] for t in CHAT]
    chat = []
    for o in llm.chat(convs, SamplingParams(temperature=0, max_tokens=128)):
        tokens = list(o.prompt_token_ids) + list(o.token_ids)
        chat.append(
            {
                "tokens": tokens,
                "start": len(o.prompt_token_ids),
                "feats": _dense_features(model, tokens),
            }
        )
    torch.save({"train": pack(train_rows), "held": pack(held_rows), "chat": chat}, args.out)
    print(f"wrote {args.out} in {time.perf_counter() - t0:.0f}s")


class Head(nn.Module):
    """A draft head variant; `forward_seq` runs two teacher-forced drafting steps."""

    def __init__(self, model: Any, variant: str, n_feats: int) -> None:
        super().__init__()
        from deploylab.engine.models.llama import LlamaDecoderLayer, RMSNorm

        cfg, hidden = model.config, model.config.hidden_size
        self.variant = variant
        self.embed = model.model.embed_tokens.weight
        self.fuse = nn.Linear(n_feats * hidden, hidden) if n_feats > 1 else nn.Identity()
        self.fc = nn.Linear(2 * hidden, hidden)
        if variant == "mlp":
            self.up, self.down = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)
        else:
            self.layer = LlamaDecoderLayer(cfg)
            self.layer.load_state_dict(model.model.layers[-1].state_dict())
            self.norm = RMSNorm(hidden, cfg.rms_norm_eps)
            self.norm.load_state_dict(model.model.norm.state_dict())
            self.rotary = model.model.rotary_emb

    def _in(self, g: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.cat([g, self.embed[tokens]], -1))

    def _block(self, f: torch.Tensor) -> torch.Tensor:
        return f + self.down(F.silu(self.up(f)))

    def forward_seq(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, n, feats] at positions 0..n-1, t [B, n] tokens: step-1 outputs o1[i] from
        (x[i], t[i+1]) and step-2 outputs from (o1[i], t[i+2])."""
        f1 = self._in(self.fuse(x)[:, :-1], t[:, 1:])
        if self.variant == "mlp":
            o1 = self._block(f1)
            return o1, self._block(self._in(o1[:, :-1], t[:, 2:]))
        layer, attn = self.layer, self.layer.self_attn
        n = f1.shape[1]
        cos, sin = self.rotary(torch.arange(n), f1.dtype)
        q, k, v = attn.project_qkv(layer.input_layernorm(f1), cos, sin)
        h1 = f1 + attn.o_proj(attn.dense_attention(q, k, v).flatten(-2))
        o1 = h1 + layer.mlp(layer.post_attention_layernorm(h1))
        f2 = self._in(o1[:, :-1], t[:, 2:])
        cos2, sin2 = self.rotary(torch.arange(1, n), f1.dtype)
        q2, k2, v2 = attn.project_qkv(layer.input_layernorm(f2), cos2, sin2)
        j = torch.arange(n - 1)[:, None]
        seen = torch.cat([torch.arange(n)[None] <= j, torch.arange(n - 1)[None] == j], 1)
        a2 = attn.dense_attention(
            q2, torch.cat([k, k2], 1), torch.cat([v, v2], 1), seen[None, None]
        )
        h2 = f2 + attn.o_proj(a2.flatten(-2))
        return o1, h2 + layer.mlp(layer.post_attention_layernorm(h2))

    def logits(self, o: torch.Tensor, vocab_weight: torch.Tensor) -> torch.Tensor:
        return (self.norm(o) if self.variant == "attn" else o) @ vocab_weight.T


def _prep(
    rows: list[dict[str, Any]], layers: list[str], normalize: bool, w: torch.Tensor
) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        parts = [r["feats"]["final" if f == "final" else int(f)] for f in layers]
        if normalize:
            parts = [F.normalize(p, dim=-1) * p.shape[-1] ** 0.5 for p in parts]
        greedy = (r["feats"]["final"] @ w.T).argmax(-1)  # greedy[i]: the target's token i + 1
        out.append(
            {
                "x": torch.cat(parts, -1),
                "t": torch.tensor(r["tokens"]),
                "g": greedy,
                "start": r["start"],
            }
        )
    return out


def _collate(rows: list[dict[str, Any]], index: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Padded features, tokens and draft-vocabulary labels of both steps (-100: none)."""
    n, b = max(len(r["t"]) for r in rows), len(rows)
    x = torch.zeros(b, n, rows[0]["x"].shape[-1])
    t = torch.zeros(b, n, dtype=torch.long)
    y1, y2 = torch.full((b, n - 1), -100), torch.full((b, n - 2), -100)
    for i, r in enumerate(rows):
        m, s = len(r["t"]), r["start"]
        x[i, :m], t[i, :m] = r["x"], r["t"]
        y1[i, s - 1 : m - 1] = index[r["g"][s:]]  # o1[p] from (x[p], t[p+1]) drafts g[p+1]
        y2[i, s - 1 : m - 2] = index[r["g"][s + 1 :]]
    return x, t, y1, y2


def train(args: argparse.Namespace) -> None:
    """Fit one variant; print held-out and chat agreement."""
    from deploylab.catalog import resolve_model
    from deploylab.engine.models.loader import load_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, _ = load_model(
        resolve_model("smollm2-135m-instruct"), torch.float32, torch.device("cpu")
    )
    model.requires_grad_(False)
    data = torch.load(args.data)
    w = model.lm_head.weight
    layers = args.layers.split(",")
    train_rows = _prep(data["train"][: args.train_prompts], layers, args.normalize, w)
    sets = {k: _prep(data[k], layers, args.normalize, w) for k in ("held", "chat")}
    counts = torch.bincount(
        torch.cat([r["g"][r["start"] :] for r in train_rows]), minlength=w.shape[0]
    )
    vocab = counts.topk(args.draft_vocab).indices.sort().values
    index = torch.full((w.shape[0],), -100)
    index[vocab] = torch.arange(len(vocab))
    wv = w.index_select(0, vocab)
    head = Head(model, args.variant, len(layers))
    params = [p for p in head.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr)
    steps = args.epochs * math.ceil(len(train_rows) / args.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=steps)
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    for epoch in range(args.epochs):
        total = 0.0
        for b in torch.randperm(len(train_rows), generator=gen).split(args.batch):
            x, t, y1, y2 = _collate([train_rows[i] for i in b], index)
            x = x + 0.05 * x.std() * torch.randn(x.shape, generator=gen)  # EAGLE's input noise
            o1, o2 = head.forward_seq(x, t)
            loss = F.cross_entropy(head.logits(o1, wv).flatten(0, 1), y1.flatten())
            loss = loss + 0.5 * F.cross_entropy(head.logits(o2, wv).flatten(0, 1), y2.flatten())
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach())
        print(f"epoch {epoch}: loss {total:.1f} ({time.perf_counter() - t0:.0f}s)", flush=True)
    with torch.inference_mode():
        for name, rows in sets.items():
            n = first = both = 0
            for r in rows:
                x, t, y1, y2 = _collate([r], index)
                o1, o2 = head.forward_seq(x, t)
                ok1 = (head.logits(o1, wv).argmax(-1)[0] == y1[0]) & (y1[0] >= 0)
                ok2 = (head.logits(o2, wv).argmax(-1)[0] == y2[0]) & (y2[0] >= 0)
                n += int((y1[0] >= 0).sum())
                first += int(ok1.sum())
                both += int((ok1[:-1] & ok2).sum())
            print(
                f"{name}: first draft {first / n:.3f}, second given first "
                f"{both / max(first, 1):.3f} ({n} positions)"
            )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="answers and features (about 6 minutes)")
    g.add_argument("--out", required=True)
    g.add_argument("--prompts", type=int, default=480)
    t = sub.add_parser("train", help="fit and score one head variant")
    t.add_argument("--data", required=True)
    t.add_argument("--variant", choices=["mlp", "attn"], default="mlp")
    t.add_argument("--layers", default="final", help=f"comma list of {LAYERS} and final")
    t.add_argument("--normalize", action="store_true", help="RMS-scale each fused feature")
    t.add_argument("--epochs", type=int, default=6)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--batch", type=int, default=8, help="sequences per step")
    t.add_argument("--draft-vocab", type=int, default=4096)
    t.add_argument("--train-prompts", type=int, default=None, help="first N training answers")
    t.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    (generate if args.command == "generate" else train)(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
