"""Per-token cost of a grammar's token mask on this CPU: xgrammar vs llguidance.

For the default model's tokenizer (SmolLM2, 49,152 tokens), a JSON schema is compiled once;
then, for every token of a JSON document that matches it, the benchmark times: fill the
next-token bitmask, apply it to a float32 logits row, and advance the matcher by the token.
Prints one table row per library: the tokenizer set-up (once per server), the schema's
compile time (once per request), and the median and p90 per-token mask cost.

    PYTHONPATH=src .venv/bin/python benchmarks/structured_mask.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import torch

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
            "required": ["city", "zip"],
        },
    },
    "required": ["name", "age", "tags", "address"],
}
DOC = {
    "name": "Ada Lovelace",
    "age": 36,
    "tags": ["mathematician", "writer", "analyst"],
    "address": {"city": "London", "zip": "W1"},
}


def load_tokenizer() -> Any:
    """SmolLM2's tokenizer from the GGUF the catalog resolves (no download)."""
    from deploylab.catalog import resolve_model
    from deploylab.engine.tokenizer import load_tokenizer as load

    return load(resolve_model("smollm2-135m-instruct"))


Timings = tuple[float, float, list[float]]


def bench_xgrammar(tok: Any, ids: list[int], vocab: int) -> Timings:
    import xgrammar as xgr

    t0 = time.perf_counter()
    compiler = xgr.GrammarCompiler(xgr.TokenizerInfo.from_huggingface(tok, vocab_size=vocab))
    t1 = time.perf_counter()
    compiled = compiler.compile_json_schema(json.dumps(SCHEMA))
    setup_s, compile_s = t1 - t0, time.perf_counter() - t1
    matcher = xgr.GrammarMatcher(compiled)
    bitmask = xgr.allocate_token_bitmask(1, vocab)
    logits = torch.randn(1, vocab)
    times = []
    for t in ids:
        start = time.perf_counter()
        matcher.fill_next_token_bitmask(bitmask)
        xgr.apply_token_bitmask_inplace(logits, bitmask)
        assert matcher.accept_token(t), "the document must match the schema"
        times.append(time.perf_counter() - start)
    return setup_s, compile_s, times


def bench_llguidance(tok: Any, ids: list[int], vocab: int) -> Timings:
    import llguidance
    import llguidance.hf
    import llguidance.torch

    t0 = time.perf_counter()
    lltok = llguidance.hf.from_tokenizer(tok, n_vocab=vocab)
    t1 = time.perf_counter()
    grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(SCHEMA))
    matcher = llguidance.LLMatcher(lltok, grammar)
    setup_s, compile_s = t1 - t0, time.perf_counter() - t1
    assert not matcher.get_error(), matcher.get_error()
    bitmask = llguidance.torch.allocate_token_bitmask(1, vocab)
    logits = torch.randn(1, vocab)
    times = []
    for t in ids:
        start = time.perf_counter()
        llguidance.torch.fill_next_token_bitmask(matcher, bitmask, 0)
        llguidance.torch.apply_token_bitmask_inplace(logits, bitmask)
        assert matcher.consume_token(t), matcher.get_error()
        times.append(time.perf_counter() - start)
    return setup_s, compile_s, times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    tok = load_tokenizer()
    vocab = len(tok)
    ids = tok.encode(json.dumps(DOC), add_special_tokens=False)
    print(f"vocab {vocab}, document {len(ids)} tokens, {args.repeats} repeats")
    print(
        f"{'library':<12} {'tokenizer ms':>12} {'schema ms':>10} {'median us/token':>16} "
        f"{'p90 us/token':>13}"
    )
    for name, fn in (("xgrammar", bench_xgrammar), ("llguidance", bench_llguidance)):
        setups, compiles, per_token = [], [], []
        for _ in range(args.repeats):
            s, c, times = fn(tok, ids, vocab)
            setups.append(s)
            compiles.append(c)
            per_token.extend(times)
        per_token.sort()
        p90 = per_token[int(0.9 * (len(per_token) - 1))]
        print(
            f"{name:<12} {statistics.median(setups) * 1e3:>12.1f} "
            f"{statistics.median(compiles) * 1e3:>10.1f} "
            f"{statistics.median(per_token) * 1e6:>16.1f} {p90 * 1e6:>13.1f}"
        )


if __name__ == "__main__":
    main()
