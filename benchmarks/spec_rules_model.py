"""Real next-token distributions for benchmarks/spec_rules.py: SmolLM2-135M and two drafts.

The target samples its own continuation of a few chat prompts (temperature 1, full
vocabulary), so positions follow the target's distribution. One forward pass over each
sequence then gives p (the target) and two drafts built from the same model:
  - early exit: its first k layers, then the final norm and the LM head (a cheaper model);
  - temperature: the target's own logits divided by T > 1 (a controlled, realistic mismatch).
It also runs judge decoding on the early-exit draft: candidate tokens are scored by the target
in one pass with a tree-style attention mask, and a JudgeHead is trained on the target's
last-layer hidden states with a proxy label (see `judge_lines`).
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from deploylab.catalog import resolve_model
from deploylab.engine.spec import JudgeHead, judge_verify

PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a refrigerator works to a ten-year-old.",
    "Give me three tips for learning to play the guitar.",
    "Describe a busy market in a small coastal town.",
    "What should I pack for a week of hiking in the mountains?",
    "Summarise the plot of a detective novel you like.",
]
CANDIDATES = 4  # judge: draft candidates scored per position
PROXY_RATIO = 0.1  # judge label: the target gives the draft token >= 10% of its top probability


def load_target() -> tuple[AutoTokenizer, AutoModelForCausalLM]:
    """The default model, from its GGUF file (dequantised to float32 by transformers)."""
    path = resolve_model("smollm2-135m-instruct")
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=str(path))
    model = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=str(path), dtype=torch.float32
    )
    return tok, model.eval()


def generate(tok, model, prompts: list[str], new_tokens: int, seed: int) -> list[torch.Tensor]:
    """Sample continuations at temperature 1 from the full vocabulary; (prompt_len, ids)."""
    torch.manual_seed(seed)
    out = []
    for text in prompts:
        ids = tok.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, return_tensors="pt"
        )
        ids = ids if isinstance(ids, torch.Tensor) else ids["input_ids"]
        with torch.no_grad():
            seq = model.generate(
                ids,
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                pad_token_id=tok.eos_token_id,
            )
        out.append((ids.shape[1], seq))
    return out


def distributions(model, prompt_len: int, seq: torch.Tensor, layers: int, temp: float):
    """p, q_early, q_temp (T, V) float64 at the positions predicting generated tokens."""
    with torch.no_grad():
        out = model(seq, output_hidden_states=True)
        sl = slice(prompt_len - 1, seq.shape[1] - 1)
        logits = out.logits[0, sl].double()
        early = model.lm_head(model.model.norm(out.hidden_states[layers]))[0, sl].double()
    return torch.softmax(logits, -1), torch.softmax(early, -1), torch.softmax(logits / temp, -1)


def candidate_hidden(model, seq: torch.Tensor, start: int, cands: torch.Tensor) -> torch.Tensor:
    """Target last-layer hidden state after each candidate token, in one pass.

    cands: (T, C) candidates for the positions start..start+T-1 (each replaces seq[pos]).
    Every candidate attends to seq[:pos] and itself only (a tree of depth one per position).
    """
    n = seq.shape[1]
    t, c = cands.shape
    pos = torch.arange(start, start + t).repeat_interleave(c)
    total = n + t * c
    allowed = torch.zeros(total, total, dtype=torch.bool)
    allowed[:n, :n] = torch.ones(n, n, dtype=torch.bool).tril()
    rows = torch.arange(n, total)
    for i, r in enumerate(rows.tolist()):
        allowed[r, : int(pos[i])] = True
        allowed[r, r] = True
    mask = torch.zeros(total, total)
    mask[~allowed] = float("-inf")
    ids = torch.cat([seq[0], cands.reshape(-1)])[None]
    position_ids = torch.cat([torch.arange(n), pos])[None]
    with torch.no_grad():
        out = model(
            ids,
            attention_mask=mask[None, None],
            position_ids=position_ids,
            output_hidden_states=True,
        )
    return out.hidden_states[-1][0, n:].reshape(t, c, -1)


def real_settings(prompts: int, new_tokens: int, layers: int, temp: float):
    """Settings for spec_rules.py plus the judge-decoding report lines."""
    tok, model = load_target()
    seqs = generate(tok, model, PROMPTS[:prompts], new_tokens, seed=0)
    early, warm, judge_data = [], [], []
    g = torch.Generator().manual_seed(1)
    for plen, seq in seqs:
        p, q_early, q_temp = distributions(model, plen, seq, layers, temp)
        early.append((p, q_early))
        warm.append((p, q_temp))
        cands = torch.multinomial(q_early.float(), CANDIDATES, replacement=True, generator=g)
        hidden = candidate_hidden(model, seq, plen, cands)
        judge_data.append((p, q_early, cands, hidden))
    n_pos = sum(p.shape[0] for p, _ in early)
    names = [
        (f"SmolLM2-135M, draft = first {layers} of 30 layers ({n_pos} positions)", early),
        (f"SmolLM2-135M, draft = target at temperature {temp} ({n_pos} positions)", warm),
    ]
    return names, judge_lines(judge_data, layers)


def judge_lines(data, layers: int) -> list[str]:
    """Train a JudgeHead on half the prompts, report acceptance on the other half."""
    half = max(1, len(data) // 2)
    feats, labels = [], []
    for p, _, cands, hidden in data[:half]:
        ratio = p.gather(1, cands) / p.amax(-1, keepdim=True)
        feats.append(hidden.reshape(-1, hidden.shape[-1]))
        labels.append((ratio >= PROXY_RATIO).reshape(-1))
    x, y = torch.cat(feats), torch.cat(labels)
    head = JudgeHead(x.shape[1])
    loss = head.fit(x, y, l2=1e-2)
    lines = [
        f"#### Judge decoding on the early-exit draft ({layers} layers), K=1",
        "",
        f"JudgeHead: {sum(t.numel() for t in head.parameters())} parameters, trained by "
        f"logistic regression on {x.shape[0]} (hidden state, label) pairs from {half} prompt(s) "
        f"(final loss {loss:.3f}; {float(y.float().mean()):.3f} positive). Proxy label: the "
        f"target gives the draft token at least {PROXY_RATIO:.0%} of its top token's "
        "probability (no human labels here). Held-out prompts below; drafts kept = SS accepts "
        "OR judge fires; 'SS would reject' = kept drafts that plain speculative sampling "
        "rejected, i.e. the departure from the target distribution.",
        "",
        "| delta | drafts kept | SS would reject | judge accuracy vs proxy |",
        "|---:|---:|---:|---:|",
    ]
    test = data[half:] or data
    for delta in (1.0, 0.95, 0.8, 0.5):
        kept = rej = correct = total = 0
        for p, q, cands, hidden in test:
            t = p.shape[0]
            fires = head.fires(hidden, delta)  # (T, C)
            ratio = p.gather(1, cands) / p.amax(-1, keepdim=True)
            correct += int((fires == (ratio >= PROXY_RATIO)).sum())
            for c in range(cands.shape[1]):
                pp = torch.stack([p, p], 1)  # gamma = 1: (T, 2, V)
                g = torch.Generator().manual_seed(100 + c)
                res = judge_verify(pp, q[:, None], cands[:, c : c + 1], fires[:, c : c + 1], g)
                g = torch.Generator().manual_seed(100 + c)
                silent = torch.zeros(t, 1, dtype=torch.bool)
                plain = judge_verify(pp, q[:, None], cands[:, c : c + 1], silent, g)
                kept += int(res.num_accepted.sum())
                rej += int(((res.num_accepted == 1) & (plain.num_accepted == 0)).sum())
                total += t
        lines.append(
            f"| {delta} | {kept / total:.4f} | {rej / total:.4f} | {correct / total:.4f} |"
        )
    lines.append("")
    return lines
