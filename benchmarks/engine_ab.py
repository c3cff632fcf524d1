"""A/B of the CPU engine between two source trees (e.g. a commit before and after a change).

Runs the default model (the CPU's int4 path) on N chat requests of exactly --max-tokens
tokens (ignore_eos) at --max-num-seqs, optionally with a speculative method, and prints tokens,
wall and CPU seconds and tok/s. Run it once per tree, alternating, in the same minutes:

    git worktree add /tmp/before <commit>
    for i in 1 2; do for t in /tmp/before .; do
        PYTHONPATH=$t/src python benchmarks/engine_ab.py --max-num-seqs 1 --method head
    done; done
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--max-num-seqs", type=int, default=16)
    p.add_argument("--method", choices=["ngram", "head", "draft_model"], default=None)
    p.add_argument("--k", type=int, default=4, help="num_speculative_tokens")
    p.add_argument("--max-tokens", type=int, default=64)
    args = p.parse_args(argv)

    import deploylab
    from deploylab.engine import LLM, SamplingParams
    from speculative import CHAT

    spec = {"method": args.method, "num_speculative_tokens": args.k} if args.method else None
    llm = LLM(
        "smollm2-135m-instruct", device="cpu", dtype="float32", kv_cache_gib=0.5,
        max_num_seqs=args.max_num_seqs, speculative_config=spec,
    )  # fmt: skip
    n = max(args.max_num_seqs, 8)
    convs = [[{"role": "user", "content": f"{CHAT[i % len(CHAT)]} ({i})"}] for i in range(n)]
    llm.chat(convs[:2], SamplingParams(max_tokens=4))  # warm-up
    params = SamplingParams(temperature=0, max_tokens=args.max_tokens, ignore_eos=True)
    t0, c0 = time.perf_counter(), time.process_time()
    outs = llm.chat(convs, params)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    tokens = sum(len(o.token_ids) for o in outs)
    print(
        f"{Path(deploylab.__file__).parents[2]}: max_num_seqs {args.max_num_seqs}, method "
        f"{args.method}: {tokens} tokens, wall {wall:.2f}s, CPU {cpu:.2f}s, "
        f"{tokens / wall:.1f} tok/s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
