"""Per-token cost of a grammar's token mask on this CPU: xgrammar vs llguidance.

For the default model's tokenizer (SmolLM2, 49,152 tokens), a JSON schema is compiled once;
then, for every token of a JSON document that matches it, the benchmark times: fill the
next-token bitmask, apply it to a float32 logits row, and advance the matcher by the token.
Prints one table row per library: the tokenizer set-up (once per server), the schema's
compile time (once per request), and the median and p90 per-token mask cost.

    PYTHONPATH=src .venv/bin/python benchmarks/structured_mask.py [--repeats 5]

xgrammar is not a dependency of deploylab (only this comparison uses it; its wheel pulls
triton): `pip install --no-deps xgrammar apache-tvm-ffi`. Without it its row is skipped.

Then, with the real model in the engine (batch of one, greedy, 128 tokens), the time per
token without a grammar and with one that allows every token (full mask cost, same output).
"""

from __future__ import annotations

import argparse
import importlib.util
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


def bench_engine(tokens: int) -> None:
    """Greedy decode of one request with and without a grammar that allows every token
    (`(.|\\n)*`): the same tokens, so the difference is the mask's cost inside a step."""
    from deploylab.engine import LLM, SamplingParams
    from deploylab.engine.structured import StructuredOutput

    llm = LLM(model="smollm2-135m-instruct", device="cpu", dtype="float32")
    prompt = "Once upon a time, in a small village by the sea,"
    free = StructuredOutput("regex", "(.|\\n)*")
    best: dict[str, float] = {}
    texts: dict[str, str] = {}
    for _ in range(3):  # alternate the two, keep each one's best (the machine is shared)
        for label, spec in (("no grammar", None), ("llguidance mask", free)):
            params = SamplingParams(
                temperature=0, max_tokens=tokens, ignore_eos=True, structured_output=spec
            )
            llm.generate(prompt, params)  # warm-up (and the tokenizer conversion)
            start = time.perf_counter()
            out = llm.generate(prompt, params)[0]
            per_token = (time.perf_counter() - start) / len(out.token_ids)
            best[label] = min(best.get(label, per_token), per_token)
            texts[label] = out.text
    assert texts["no grammar"] == texts["llguidance mask"], "a grammar allowing all changed tokens"
    for label, seconds in best.items():
        print(f"{label:<16} {tokens} tokens  {seconds * 1e3:.2f} ms/token (best of 3)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--engine-tokens", type=int, default=128, help="0 skips the engine run")
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
        if importlib.util.find_spec(name) is None:
            print(f"{name:<12} not installed: skipped")
            continue
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
    if args.engine_tokens:
        bench_engine(args.engine_tokens)


if __name__ == "__main__":
    main()
