"""Host cost per engine step as the waiting queue grows (issue 28): no model, only the parts
of a step that could scale with the queue.

A full batch of --batch sequences decodes (one token a step, none finishes) while Q more wait
behind it (admission is blocked by `max_num_seqs`, as in a long offline run or a loaded
server). Per step: `Scheduler.schedule` + `update_after_step` (with the prefix cache), and
`LLMEngine.stats()` (which `AsyncEngine` takes after every step) — median microseconds over
--steps steps, for each Q.

    python benchmarks/queue_host_cost.py --queue 0 256 2048 16384
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from deploylab.engine.block_manager import BlockManager
from deploylab.engine.sampling_params import SamplingParams
from deploylab.engine.scheduler import Scheduler
from deploylab.engine.sequence import Sequence


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--queue", type=int, nargs="+", default=[0, 256, 2048, 16384])
    p.add_argument("--prompt-len", type=int, default=512)
    p.add_argument("--steps", type=int, default=200)
    return p.parse_args(argv)


def median_us(fn: object, steps: int) -> float:
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append((time.perf_counter() - t0) * 1e6)
    return statistics.median(times)


def measure(batch: int, queue: int, prompt_len: int, steps: int) -> dict[str, float]:
    bs = 16
    blocks = (batch + 1) * (-(-(prompt_len + steps + 4) // bs) + 1)
    bm = BlockManager(blocks, bs, enable_prefix_caching=True)
    sched = Scheduler(bm, max_num_seqs=batch, max_num_batched_tokens=max(2048, batch))
    params = SamplingParams(temperature=0, max_tokens=10**6, ignore_eos=True)
    for i in range(batch + queue):
        sched.add(
            Sequence(f"r{i}", [(i * 31 + j) % 30000 + 1 for j in range(prompt_len)], params, i)
        )
    while len(sched.running) < batch or any(
        s.num_computed_tokens < s.num_tokens for s in sched.running
    ):
        sched.update_after_step(sched.schedule())
    for s in sched.running:  # a token sampled for everyone: decodes from here on
        s.token_ids.append(7)

    def step() -> None:
        out = sched.schedule()
        sched.update_after_step(out)
        for item in out.scheduled:
            item.seq.token_ids.append(7)

    sched_us = median_us(step, steps)
    assert len(sched.waiting) == queue
    from deploylab.engine.llm_engine import _lora_names

    walk_us = median_us(lambda: _lora_names(sched.waiting), steps)
    return {"queue": queue, "schedule_us": sched_us, "waiting_walk_us": walk_us}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"batch {args.batch}, prompts of {args.prompt_len} tokens, median of {args.steps}")
    print(f"{'waiting':>8}{'schedule+update us':>20}{'walk of the queue us':>22}")
    for q in args.queue:
        r = measure(args.batch, q, args.prompt_len, args.steps)
        print(f"{q:>8}{r['schedule_us']:>20.1f}{r['waiting_walk_us']:>22.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
