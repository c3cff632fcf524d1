"""Greedy agreement of the CPU decode paths with the exact float path: for chat prompts, the
first token index where `int4` (eager) and `int4` + `cpu_compile` part from `none` (the
dequantized float path), and from each other.

    PYTHONPATH=src python benchmarks/cpu_compile_agreement.py --out agreement.json
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch

from deploylab.engine import LLM, SamplingParams

PROMPTS = [
    "Tell me a long story about a lighthouse keeper.",
    "Explain how a steam engine works.",
    "Write a poem about the sea.",
    "What is the capital of France? Answer in one sentence.",
    "List five fruits.",
]
SIDES: dict[str, dict[str, Any]] = {
    "float": {"quantization": "none"},
    "int4": {"quantization": "int4"},
    "int4-compiled": {"quantization": "int4", "cpu_compile": True},
}


def first_difference(a: list[int], b: list[int]) -> int:
    """The first index where two token lists differ (their common length if none)."""
    return next((j for j in range(min(len(a), len(b))) if a[j] != b[j]), min(len(a), len(b)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--max-tokens", type=int, default=100)
    p.add_argument("--out", help="write the tokens and first differences here (JSON)")
    args = p.parse_args()
    torch.set_num_threads(1)
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, ignore_eos=True)
    tokens: dict[str, list[list[int]]] = {}
    for name, settings in SIDES.items():
        llm = LLM(model="smollm2-135m-instruct", device="cpu", **settings)
        chats = [
            llm.tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
            )
            for text in PROMPTS
        ]
        tokens[name] = [llm.generate([c], params)[0].token_ids for c in chats]
        del llm
    firsts = {}
    for x, y in (("int4", "float"), ("int4-compiled", "float"), ("int4-compiled", "int4")):
        pairs = zip(tokens[x], tokens[y], strict=True)
        firsts[f"{x} vs {y}"] = [first_difference(a, b) for a, b in pairs]
        print(f"{x} vs {y}: first difference at token {firsts[f'{x} vs {y}']} "
              f"(of {args.max_tokens})", flush=True)  # fmt: skip
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"prompts": PROMPTS, "first_difference": firsts, "tokens": tokens}, f)


if __name__ == "__main__":
    main()
