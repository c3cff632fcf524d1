"""Distil a `DraftHead` from the target model's own generations (CPU, a few minutes).

1. The target answers templated chat prompts through the engine (half greedy, half sampled at
   temperature 0.7); the model runner's hidden-state hook records the last hidden state of
   every sampled row (`h_t`, which predicted token t + 1).
2. Training rows: (h_t, token t+1) -> the next hidden state h_{t+1} and the target's greedy
   choice there (argmax of its LM head on h_{t+1}); a second unrolled step feeds the head's own
   guess back. Loss: cross-entropy over the draft vocabulary (the most frequent generated
   tokens) + smooth-L1 to the true hidden state.
3. Held-out prompts measure top-1 agreement of the first and second draft with the target's
   greedy token; it is saved in the head's metadata.

    python -m deploylab.engine.spec_decode.train_head   # writes the shipped head (make spec-head)
"""

from __future__ import annotations

import argparse
import itertools
import random
import sys
import time
from typing import Any

import torch
from torch import nn

from deploylab.engine.spec_decode.head import DraftHead, default_head_path

TOPICS = [
    "volcanoes", "the moon", "bread", "bicycles", "rainforests", "chess", "the ocean",
    "electricity", "honey", "trains", "the human heart", "clouds", "coffee", "penguins",
    "the internet", "gardening", "music", "deserts", "airplanes", "recycling", "dinosaurs",
    "the stock market", "sleep", "photography", "glaciers", "football", "vaccines", "robots",
    "ancient Rome", "solar panels", "friendship", "mountains", "cheese", "bees", "rivers",
    "computers", "the weather", "libraries", "running", "painting",
]  # fmt: skip
FORMS = [
    "Tell me about {t}.",
    "Explain {t} to a child.",
    "What are three interesting facts about {t}?",
    "Write a short poem about {t}.",
    "Why is {t} important?",
    "Give me some advice related to {t}.",
    "Describe {t} in a few sentences.",
    "What is the history of {t}?",
]


# More everyday request shapes (`--wide-forms`): short answers, how-tos, lists, comparisons.
WIDE_FORMS = [
    "How does {t} work? Answer in two sentences.",
    "Give me one practical tip about {t}.",
    "Write a haiku about {t}.",
    "List three things people get wrong about {t}.",
    "What is the difference between {t} and {u}?",
    "Write the opening of a short story about {t}.",
    "Answer briefly: is {t} good for beginners?",
    "Summarise what you know about {t} in one paragraph.",
]


def prompts(seed: int, wide: bool = False) -> list[str]:
    """Every topic × form (with `wide`, also × WIDE_FORMS; {u} is another topic), shuffled."""
    forms = FORMS + (WIDE_FORMS if wide else [])
    out = [
        f.format(t=t, u=TOPICS[(i + 7) % len(TOPICS)])
        for (i, t), f in itertools.product(enumerate(TOPICS), forms)
    ]
    random.Random(seed).shuffle(out)
    return out


def generate(
    llm: Any, texts: list[str], max_tokens: int, sampled: float = 0.5, temperature: float = 0.7
) -> list[dict[str, Any]]:
    """The target's answers with the hidden state of every generated position (`hidden[t]`
    predicted token t); a `sampled` fraction of them at `temperature`, the rest greedy."""
    from deploylab.engine import SamplingParams

    runner = llm.llm_engine.runner
    runner.keep_hidden = True
    seen: dict[str, dict[int, torch.Tensor]] = {}
    execute = runner.execute

    def recording(out: Any) -> Any:
        seqs, logits = execute(out)
        if runner.sample_hidden is not None:
            for seq, h in zip(seqs, runner.sample_hidden, strict=True):
                seen.setdefault(seq.request_id, {})[seq.num_tokens] = h.clone()
        return seqs, logits

    runner.execute = recording
    params = [
        SamplingParams(
            temperature=temperature if (i * sampled) % 1 < sampled else 0.0,
            seed=i,
            max_tokens=max_tokens,
        )
        for i in range(len(texts))
    ]
    convs = [[{"role": "user", "content": t}] for t in texts]
    outs = llm.chat(convs, params)
    runner.execute = execute
    rows = []
    for o in outs:
        hidden = seen.get(o.request_id, {})
        tokens = list(o.prompt_token_ids) + list(o.token_ids)
        rows.append({"tokens": tokens, "hidden": hidden})
    return rows


def examples(rows: list[dict[str, Any]], model: Any) -> dict[str, torch.Tensor]:
    """Two-step training rows: h_p, token p, then (target hidden, greedy label) at p+1, p+2."""
    h0, x0, x1, h1, h2 = [], [], [], [], []
    for r in rows:
        hid, toks = r["hidden"], r["tokens"]
        for p in sorted(hid):
            if p + 2 in hid and p + 1 < len(toks):
                h0.append(hid[p])
                x0.append(toks[p])
                x1.append(toks[p + 1])
                h1.append(hid[p + 1])
                h2.append(hid[p + 2])
    out = {
        "h0": torch.stack(h0),
        "x0": torch.tensor(x0),
        "x1": torch.tensor(x1),
        "h1": torch.stack(h1),
        "h2": torch.stack(h2),
    }
    with torch.inference_mode():  # the target's greedy choices after p+1 and p+2
        out["y1"] = torch.cat([model.compute_logits(c).argmax(-1) for c in out["h1"].split(512)])
        out["y2"] = torch.cat([model.compute_logits(c).argmax(-1) for c in out["h2"].split(512)])
    return out


def draft_vocabulary(data: dict[str, torch.Tensor], size: int, vocab: int) -> torch.Tensor:
    """The `size` most frequent greedy labels (sorted ids)."""
    counts = torch.bincount(torch.cat([data["y1"], data["y2"]]), minlength=vocab)
    return counts.topk(min(size, vocab)).indices.sort().values


class _Step(nn.Module):
    def __init__(self, head: DraftHead, model: Any) -> None:
        super().__init__()
        self.head = head
        self.embed = model.model.embed_tokens.weight.detach()
        self.weight = model.lm_head.weight.detach().index_select(0, head.draft_vocab)

    def forward(self, h: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.head(h, self.embed[x])
        return f, f @ self.weight.T


def train(
    data: dict[str, torch.Tensor], model: Any, vocab_ids: torch.Tensor, args: argparse.Namespace
) -> DraftHead:
    """Two-step unrolled distillation (cross-entropy + smooth-L1 on the hidden state)."""
    hidden = data["h0"].shape[1]
    head = DraftHead(hidden, vocab_ids)
    step = _Step(head, model)
    index = torch.full((model.config.vocab_size,), -100, dtype=torch.int64)
    index[vocab_ids] = torch.arange(len(vocab_ids))
    y1, y2 = index[data["y1"]], index[data["y2"]]
    opt = torch.optim.AdamW(head.parameters(), lr=args.lr, weight_decay=0.0)
    n = len(y1)
    total = args.epochs * -(-n // args.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=total)
    ce, l1 = nn.CrossEntropyLoss(ignore_index=-100), nn.SmoothL1Loss()
    gen = torch.Generator().manual_seed(args.seed)
    for epoch in range(args.epochs):
        t0, seen = time.perf_counter(), 0.0
        for b in torch.randperm(n, generator=gen).split(args.batch):
            h0 = data["h0"][b] + args.noise * torch.randn(len(b), hidden, generator=gen)
            f1, z1 = step(h0, data["x0"][b])
            f2, z2 = step(f1, data["x1"][b])
            loss = ce(z1, y1[b]) + l1(f1, data["h1"][b]) * args.l1
            loss = loss + 0.5 * (ce(z2, y2[b]) + l1(f2, data["h2"][b]) * args.l1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            seen += float(loss.detach()) * len(b)
        print(f"epoch {epoch}: loss {seen / n:.3f} ({time.perf_counter() - t0:.0f}s)", flush=True)
    return head.eval()


@torch.inference_mode()
def agreement(head: DraftHead, model: Any, data: dict[str, torch.Tensor]) -> tuple[float, float]:
    """Top-1 agreement of the first and second (own-guess fed) draft with the target."""
    step = _Step(head, model)
    f1, z1 = step(data["h0"], data["x0"])
    d1 = head.draft_vocab[z1.argmax(-1)]
    _, z2 = step(f1, data["x1"])
    d2 = head.draft_vocab[z2.argmax(-1)]
    first = (d1 == data["y1"]).float()
    both = first * (d2 == data["y2"]).float()
    return float(first.mean()), float(both.sum() / first.sum().clamp(min=1))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--out", default=None, help="default: the shipped head's path")
    p.add_argument("--prompts", type=int, default=480, help="training prompts (+1/8 held out)")
    p.add_argument("--max-tokens", type=int, default=96)
    p.add_argument("--draft-vocab", type=int, default=4096)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--l1", type=float, default=1.0, help="weight of the hidden-state loss")
    p.add_argument("--noise", type=float, default=0.05, help="input noise (EAGLE)")
    p.add_argument(
        "--sampled-fraction", type=float, default=0.25, help="answers sampled at temperature 0.7"
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--wide-forms",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also WIDE_FORMS' request shapes (--no-wide-forms: the first head's prompts)",
    )
    return p.parse_args(argv)


def generations(
    args: argparse.Namespace, temperature: float = 0.7
) -> tuple[Any, list[dict[str, Any]], list[dict[str, Any]]]:
    """The target (CPU, float32) and its answers to `args.prompts` templated prompts plus
    1/8 held out: (model, training rows, held-out rows) of `generate`."""
    from deploylab.engine import LLM

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    llm = LLM(args.model, device="cpu", dtype="float32", max_num_seqs=32, kv_cache_gib=0.5)
    texts = prompts(args.seed, getattr(args, "wide_forms", False))
    texts = texts[: args.prompts + args.prompts // 8]
    rows = generate(llm, texts, args.max_tokens, args.sampled_fraction, temperature)
    held = args.prompts // 8
    return llm.llm_engine.model, rows[held:], rows[:held]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    model, train_rows, held_rows = generations(args)
    data, test = examples(train_rows, model), examples(held_rows, model)
    print(f"{len(data['y1'])} training rows, {len(test['y1'])} held out, "
          f"generated in {time.perf_counter() - t0:.0f}s", flush=True)  # fmt: skip
    vocab_ids = draft_vocabulary(data, args.draft_vocab, model.config.vocab_size)
    head = train(data, model, vocab_ids, args)
    first, second = agreement(head, model, test)
    minutes = (time.perf_counter() - t0) / 60
    print(f"held-out agreement: first draft {first:.3f}, second given first {second:.3f}; "
          f"{minutes:.1f} min", flush=True)  # fmt: skip
    out = args.out or default_head_path(args.model)
    meta = {
        "model": args.model,
        "agreement_first": f"{first:.4f}",
        "agreement_second_given_first": f"{second:.4f}",
        "training_rows": str(len(data["y1"])),
        "args": " ".join(sys.argv[1:]) if argv is None else " ".join(argv),
        "minutes": f"{minutes:.1f}",
    }
    head.save(out, meta)
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
