"""What the int4 CPU path changes in the default model's output (issue 24, docs/engine.md).

Perplexity of a small text (README.md's opening, teacher-forced, every row through the int4
kernel, which the engine now does anyway) and the first greedy token that differs from
the exact float32 path, for a few prompts; the int4 path with the int4 LM head
(`lm_head_quantization="int4"`), and bfloat16's float path beside them for scale.

    python benchmarks/cpu_quant_quality.py --out benchmarks/results/cpu_quant_quality.json
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import torch

from deploylab.engine import LLM, SamplingParams

PROMPTS = [
    "The capital of France is",
    "Write a haiku about the sea.",
    "def fibonacci(n):",
    "Explain what a GPU does in one sentence.",
    "List three prime numbers.",
    "Once upon a time, in a small village,",
]
# (quantization, dtype, lm_head_quantization)
VARIANTS = [
    ("none", "float32", "int8"),
    ("int4", "float32", "int8"),
    ("int4", "float32", "int4"),
    ("none", "bfloat16", "int8"),
]


def perplexity(llm: LLM, text: str) -> tuple[float, int]:
    """exp(mean negative log-likelihood) of the text's tokens after the first."""
    params = SamplingParams(max_tokens=1, prompt_logprobs=0)
    out = llm.generate(text, params)[0]
    lps = [e.logprob for e in out.prompt_logprobs or [] if e is not None]
    return math.exp(-sum(lps) / len(lps)), len(lps) + 1


def first_difference(a: list[int], b: list[int]) -> int:
    """Index of the first differing token (len when equal)."""
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), len(a))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("out/cpu_quant_quality.json"))
    parser.add_argument("--chars", type=int, default=2400, help="README characters scored")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()[: args.chars]
    greedy = SamplingParams(max_tokens=args.max_tokens, temperature=0, ignore_eos=True)
    rows: list[dict[str, Any]] = []
    tokens: dict[str, list[list[int]]] = {}
    for quant, dtype, head in VARIANTS:
        llm = LLM(
            quantization=quant, dtype=dtype, lm_head_quantization=head, num_threads=args.threads
        )
        ppl, n = perplexity(llm, text)
        name = f"{quant}/{dtype}" + ("/head-int4" if head == "int4" else "")
        tokens[name] = [o.token_ids for o in llm.generate(PROMPTS, greedy)]
        rows.append({"variant": name, "perplexity": ppl, "tokens_scored": n})
        print(rows[-1], flush=True)
    exact = tokens["none/float32"]
    for row in rows:
        row["first_greedy_difference"] = [
            first_difference(e, t) for e, t in zip(exact, tokens[row["variant"]], strict=True)
        ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"max_tokens": args.max_tokens, "rows": rows}, indent=1))
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
