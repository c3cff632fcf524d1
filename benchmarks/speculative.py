"""Speculative decoding in the engine: every proposer vs no speculation, same run.

For each prompt set (chat questions; RAG-style prompts whose answers quote their context) and
each batch size, the same greedy requests (at least --min-requests, run in groups of the batch
size: batch 1 runs them one at a time) go through engines sharing the model's weights: one
plain, then one per proposer (--methods: ngram, head, draft_model) with `speculative_config`
(adaptive k policy on; --fixed-k turns it off); the engines take turns request group by
request group, so load changes on a shared machine hit all sides alike. Reported per row:
target passes (engine steps), output tokens, tokens per target pass per sequence
(1 + accepted drafts per drafting step), draft acceptance rate, wall-clock time of both sides
and the speed-up. Greedy outputs are compared token for token with the plain engine's (they
must be identical).

    python benchmarks/speculative.py --batch-sizes 1 8 32 --max-tokens 64 --methods ngram head

Prompt sets: `chat` (everyday questions), `rag` (one short passage and a question asking to
quote it), `rag-docs` (three numbered retrieved documents, the relevant one among two others,
and a question about its subject asking for a quote or summary from the documents).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

PASSAGES = [
    "The Great Barrier Reef is the world's largest coral reef system, composed of over 2,900 "
    "individual reefs and 900 islands stretching for over 2,300 kilometres. It is located in "
    "the Coral Sea, off the coast of Queensland, Australia.",
    "Photosynthesis is the process by which green plants use sunlight, water and carbon "
    "dioxide to make glucose and oxygen. It takes place in the chloroplasts, which contain "
    "the green pigment chlorophyll.",
    "The Rhine is a river that begins in the Swiss Alps, flows through Germany and the "
    "Netherlands, and empties into the North Sea. It is about 1,230 kilometres long and is "
    "one of the most important waterways in Europe.",
    "Marie Curie was a physicist and chemist who conducted pioneering research on "
    "radioactivity. She was the first woman to win a Nobel Prize and the only person to win "
    "Nobel Prizes in two different sciences, physics and chemistry.",
    "The Python programming language was created by Guido van Rossum and first released in "
    "1991. Its design philosophy emphasizes code readability with the use of significant "
    "indentation.",
    "Mount Kilimanjaro is a dormant volcano in Tanzania. It has three volcanic cones, Kibo, "
    "Mawenzi and Shira, and its highest point, Uhuru Peak, is 5,895 metres above sea level.",
    "The printing press was invented by Johannes Gutenberg around 1440 in Mainz, Germany. "
    "His movable-type printing press made books cheaper and helped spread the Renaissance "
    "and the Reformation.",
    "Honey bees live in colonies with one queen, thousands of female worker bees and a few "
    "hundred male drones. Worker bees collect nectar and pollen, build the comb and care for "
    "the young.",
]
QUESTIONS = [
    "Using only the context, answer: what is it and where is it? Quote the context.",
    "Summarise the context in two sentences, reusing its exact wording.",
    "Repeat the most important sentence of the context word for word, then explain it.",
    "What does the context say? Answer by quoting it.",
]
CHAT = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain in two sentences why the sky is blue.",
    "List three prime numbers and say why they are prime.",
    "Give me a tip for learning to cook.",
    "What is the difference between a virus and a bacterium?",
    "Write a short story opening about a lighthouse keeper.",
    "How do I make a cup of tea?",
]


DOC_QUESTIONS = [
    "Where is {subject} and what is it? Answer with a quote from the documents.",
    "What do the documents say about {subject}? Quote the relevant sentences.",
    "Answer from the documents only, citing the sentence you use: tell me about {subject}.",
    "Summarise what the documents say about {subject}, keeping their wording.",
]
SUBJECTS = [
    "the Great Barrier Reef",
    "photosynthesis",
    "the Rhine",
    "Marie Curie",
    "the Python programming language",
    "Mount Kilimanjaro",
    "the printing press",
    "honey bees",
]


# The fact a faithful answer about each passage names (the small task score of lossy rules).
KEY_FACTS = ["queensland", "chlorophyll", "north sea", "nobel", "guido van rossum", "tanzania",
             "gutenberg", "queen"]  # fmt: skip


def task_score(name: str, texts: list[str]) -> float | None:
    """Share of answers that name their passage's key fact (rag sets; None for chat)."""
    if name == "chat":
        return None
    hits = [KEY_FACTS[i % len(KEY_FACTS)] in t.lower() for i, t in enumerate(texts)]
    return sum(hits) / max(len(hits), 1)


def rag_docs_prompt(i: int) -> str:
    """A retrieval-augmented prompt: three numbered documents (the relevant one among two
    others, its place varying) and a question about the relevant one's subject."""
    m = len(PASSAGES)
    picks = [(i + 3) % m, (i + 5) % m]
    picks.insert(i % 3, i % m)
    docs = "\n\n".join(f"[{j + 1}] {PASSAGES[d]}" for j, d in enumerate(picks))
    question = DOC_QUESTIONS[(i // m + i) % len(DOC_QUESTIONS)].format(subject=SUBJECTS[i % m])
    return f"Documents:\n{docs}\n\nQuestion: {question}"


def prompt_set(name: str, n: int) -> list[list[dict[str, str]]]:
    """n conversations (distinct where the set allows) of the named set."""
    out = []
    for i in range(n):
        if name == "chat":
            text = CHAT[i % len(CHAT)]
        elif name == "rag-docs":
            text = rag_docs_prompt(i)
        else:
            passage = PASSAGES[i % len(PASSAGES)]
            question = QUESTIONS[(i // len(PASSAGES) + i) % len(QUESTIONS)]
            text = f"Context:\n{passage}\n\nQuestion: {question}"
        out.append([{"role": "user", "content": text}])
    return out


@dataclass
class Row:
    """One prompt set at one batch size, both sides."""

    method: str
    prompts: str
    batch: int
    output_tokens: int
    plain_tokens: int
    plain_passes: int
    spec_passes: int
    tokens_per_pass: float  # per sequence: 1 + accepted drafts per drafting step
    acceptance: float
    plain_s: float
    spec_s: float
    plain_cpu_s: float  # CPU time of this process (one torch thread): the work, less the wait
    spec_cpu_s: float
    identical: bool
    agreement: float  # mean share of the plain greedy answer reproduced before a difference
    plain_score: float | None  # task score (share of answers naming the key fact), rag sets
    spec_score: float | None

    @property
    def speedup(self) -> float:
        return self.plain_s / self.spec_s

    @property
    def tps_speedup(self) -> float:
        """Output tokens per second, spec over plain: the speed-up of a lossy rule, whose
        answers may be longer or shorter than the plain ones."""
        return (self.output_tokens / self.spec_s) / (self.plain_tokens / self.plain_s)

    @property
    def cpu_speedup(self) -> float:
        return self.plain_cpu_s / self.spec_cpu_s


def run_interleaved(
    llms: list[Any], convs: list[Any], params: Any, batch: int
) -> list[tuple[float, float, list[list[int]], int]]:
    """Per engine: wall time, process CPU time, output token ids and target passes of
    generating `convs` in groups of `batch` requests (one `chat` call per group). The engines
    take turns group by group, so a change in the machine's load hits every side alike."""
    out: list[list[Any]] = []
    for llm in llms:
        out.append([0.0, 0.0, [], llm.llm_engine.stats().num_steps_total])
    for i in range(0, len(convs), batch):
        for llm, side in zip(llms, out, strict=True):
            t0, c0 = time.perf_counter(), time.process_time()
            side[2] += [o.token_ids for o in llm.chat(convs[i : i + batch], params)]
            side[0] += time.perf_counter() - t0
            side[1] += time.process_time() - c0
    return [
        (side[0], side[1], side[2], llm.llm_engine.stats().num_steps_total - side[3])
        for llm, side in zip(llms, out, strict=True)
    ]


def agreement(plain: list[list[int]], spec: list[list[int]]) -> float:
    """Mean over requests of the share of the plain (target greedy) answer that the other
    answer reproduces before its first different token (1.0: identical)."""
    shares = []
    for a, b in zip(plain, spec, strict=True):
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        shares.append(n / max(len(a), 1))
    return sum(shares) / max(len(shares), 1)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument(
        "--prompt-sets",
        nargs="+",
        default=["rag", "rag-docs", "chat"],
        choices=["rag", "rag-docs", "chat"],
    )
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument(
        "--temperature", type=float, default=0.0,
        help="> 0: sampled requests (seeded per request; outputs are then not comparable)",
    )  # fmt: skip
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--k", type=int, default=4, help="num_speculative_tokens")
    p.add_argument("--ngram-k", type=int, default=None, help="ngram's k (default: --k)")
    p.add_argument("--lookup-max", type=int, default=4)
    p.add_argument("--lookup-min", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--quantization",
        choices=["none", "int4"],
        default="none",
        help="none: the float32 path (earlier tables); int4: the CPU default for a GGUF file",
    )
    p.add_argument(
        "--min-requests", type=int, default=8, help="requests per row (batch 1: one at a time)"
    )
    p.add_argument(
        "--methods", nargs="+", default=["ngram", "head"],
        help="proposers; lossy rules: METHOD@RULE:ALPHA (cascades, e.g. ngram@v3:0.3), "
        "METHOD@judge[:DELTA] (judge decoding with the shipped judge); token trees: METHOD+treeW "
        "(e.g. ngram+tree4, draft_model+tree4)",
    )  # fmt: skip
    p.add_argument("--fixed-k", action="store_true", help="adaptive k policy off")
    p.add_argument("--alt-head-path", help="method alt-head: a head file to compare")
    p.add_argument("--draft-layers", type=int, default=8, help="draft_model: target layers kept")
    p.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from deploylab.catalog import resolve_model
    from deploylab.engine import LLM, EngineConfig, LLMEngine, SamplingParams
    from deploylab.engine.models.loader import load_model
    from deploylab.engine.tokenizer import load_tokenizer

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    path = resolve_model(args.model)
    model, _ = load_model(path, torch.float32, torch.device("cpu"))
    if args.quantization == "int4":  # the CPU default for a GGUF: int4 layers, int8 LM head
        from deploylab.engine.cpu_quant import apply_quantization

        quant = EngineConfig(model=str(path), quantization="int4")
        apply_quantization(quant, model, torch.device("cpu"), own=True)
    tok = load_tokenizer(path)

    def spec_config(label: str) -> dict[str, Any]:
        method, _, cascade = label.partition("@")
        method, _, tree = method.partition("+tree")  # METHOD+treeW: token trees of width W
        alt = method == "alt-head"  # the head at --alt-head-path, beside the shipped one
        method = "head" if alt else method
        k = args.ngram_k if method == "ngram" and args.ngram_k else args.k
        cfg: dict[str, Any] = {
            "method": method, "num_speculative_tokens": k, "adaptive": not args.fixed_k,
        }  # fmt: skip
        rule, _, alpha = cascade.partition(":")
        if rule == "judge":  # the shipped judge; judge:DELTA overrides its delta
            cfg |= {"judge": True} | ({"judge_delta": float(alpha)} if alpha else {})
        elif rule:
            cfg |= {"cascade_rule": rule, "cascade_alpha": float(alpha or 0)}
        if method == "ngram":
            cfg |= {"prompt_lookup_max": args.lookup_max, "prompt_lookup_min": args.lookup_min}
        if tree:
            cfg["tree_width"] = int(tree)
        if alt:
            cfg["head_path"] = args.alt_head_path
        if method == "draft_model":
            cfg["draft_layers"] = args.draft_layers
        return cfg

    def engine(cfg: dict[str, Any] | None, batch: int) -> Any:
        config = EngineConfig(
            model=str(path), device="cpu", dtype="float32", kv_cache_gib=0.5,
            max_num_seqs=max(batch, 1), speculative_config=cfg,
        )  # fmt: skip
        llm = LLM(llm_engine=LLMEngine(config, model=model, tokenizer=tok))
        llm.chat([[{"role": "user", "content": "hi"}]], SamplingParams(max_tokens=2))
        llm.llm_engine.block_manager.evict_cached()
        return llm

    params = SamplingParams(
        temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens,
        seed=0 if args.temperature > 0 else None,
    )  # fmt: skip
    rows = []
    for name in args.prompt_sets:
        for batch in args.batch_sizes:
            convs = prompt_set(name, max(batch, args.min_requests))
            llms = [engine(None, batch)] + [engine(spec_config(m), batch) for m in args.methods]
            sides = run_interleaved(llms, convs, params, batch)
            plain_s, plain_cpu, plain_ids, plain_n = sides[0]
            for method, spec_llm, (spec_s, spec_cpu, spec_ids, spec_n) in zip(
                args.methods, llms[1:], sides[1:], strict=True
            ):
                st = spec_llm.llm_engine.spec.stats
                row = Row(
                    method=method,
                    prompts=name,
                    batch=batch,
                    output_tokens=sum(len(t) for t in spec_ids),
                    plain_tokens=sum(len(t) for t in plain_ids),
                    plain_passes=plain_n,
                    spec_passes=spec_n,
                    tokens_per_pass=1 + st.num_accepted_tokens / max(st.num_drafts, 1),
                    acceptance=st.num_accepted_tokens / max(st.num_draft_tokens, 1),
                    plain_s=plain_s,
                    spec_s=spec_s,
                    plain_cpu_s=plain_cpu,
                    spec_cpu_s=spec_cpu,
                    identical=plain_ids == spec_ids,
                    agreement=agreement(plain_ids, spec_ids),
                    plain_score=task_score(name, [tok.decode(t) for t in plain_ids]),
                    spec_score=task_score(name, [tok.decode(t) for t in spec_ids]),
                )
                rows.append(row)
                print(
                    f"{method:11s} {name:5s} batch {batch:3d}: {row.output_tokens:5d} tokens, "
                    f"passes {plain_n} -> {spec_n}, {row.tokens_per_pass:.2f} tok/pass/seq, "
                    f"accept {row.acceptance:.2f}, {plain_s:.1f}s -> {spec_s:.1f}s = "
                    f"{row.speedup:.2f}x (CPU time {plain_cpu:.1f}s -> {spec_cpu:.1f}s = "
                    f"{row.cpu_speedup:.2f}x), identical {row.identical}",
                    flush=True,
                )
    print(f"\nconfigs: {[spec_config(m) for m in args.methods]}, max_tokens "
          f"{args.max_tokens}, threads {args.threads}, "
          f"quantization {args.quantization}")  # fmt: skip
    print("| method | prompts | batch | output tokens | target passes (plain → spec) "
          "| tokens/pass/seq | acceptance | plain s | spec s | speed-up | plain CPU s | spec CPU s "
          "| CPU-time speed-up | tok/s speed-up | identical | agreement "
          "| task score |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|")
    for r in rows:
        score = "-" if r.spec_score is None else f"{r.plain_score:.2f} → {r.spec_score:.2f}"
        print(
            f"| {r.method} | {r.prompts} | {r.batch} | {r.output_tokens} | {r.plain_passes} → "
            f"{r.spec_passes} | {r.tokens_per_pass:.2f} | {r.acceptance:.2f} | "
            f"{r.plain_s:.1f} | {r.spec_s:.1f} | {r.speedup:.2f}× | {r.plain_cpu_s:.1f} | "
            f"{r.spec_cpu_s:.1f} | {r.cpu_speedup:.2f}× | {r.tps_speedup:.2f}× | "
            f"{'yes' if r.identical else 'NO'} | {r.agreement:.2f} | {score} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                [asdict(r) | {"speedup": r.speedup, "cpu_speedup": r.cpu_speedup} for r in rows],
                f,
                indent=1,
            )
    return 0 if all(r.identical for r in rows if "@" not in r.method) else 1  # lossy may differ


if __name__ == "__main__":
    sys.exit(main())
