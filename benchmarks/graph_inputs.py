"""Host time to build one CUDA-graph decode replay's inputs (`DecodeGraphs.run` with the
replay stubbed out), so it runs on any machine: the part of a decode step the GPU waits for.

    python benchmarks/graph_inputs.py --batch 256 --context 1024 --widths 257,8192
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from deploylab.engine.cuda_graphs import DecodeGraphs
from deploylab.engine.kv_cache import KVCache
from deploylab.engine.models.presets import get_preset

BLOCK = 16


class _NoReplay(DecodeGraphs):
    """Graph buffers on the CPU and no replay: only the input building is timed."""

    def _replay(self, g: Any) -> torch.Tensor:
        return g.ids


def time_inputs(batch: int, context: int, width: int, iters: int) -> float:
    """Mean ms per `run()` for `batch` decodes at `context` tokens, table buffer `width`."""
    blocks = -(-context // BLOCK)
    kv = KVCache(get_preset("tiny"), batch * blocks + 1, BLOCK, torch.float32, torch.device("cpu"))
    graphs = _NoReplay(None, kv, None, batch, width, batch * blocks * BLOCK)  # type: ignore[arg-type]
    for size in graphs.sizes:
        graphs.graphs[size] = graphs._new(size)
    ids = list(range(batch))
    pos = [context - 1] * batch
    tables = [list(range(i * blocks, (i + 1) * blocks)) for i in range(batch)]
    slots = [t[-1] * BLOCK + (context - 1) % BLOCK for t in tables]
    lens = [context] * batch
    for _ in range(20):
        graphs.run(ids, pos, slots, tables, lens)
    start = time.perf_counter()
    for _ in range(iters):
        graphs.run(ids, pos, slots, tables, lens)
    return 1e3 * (time.perf_counter() - start) / iters


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--context", type=int, default=1024)
    p.add_argument("--widths", default="257,8192", help="graph table widths (max_model_len/16)")
    p.add_argument("--iters", type=int, default=300)
    args = p.parse_args()
    for width in (int(w) for w in args.widths.split(",")):
        ms = time_inputs(args.batch, args.context, width, args.iters)
        print(f"batch {args.batch}, context {args.context}, table width {width}: {ms:.3f} ms")


if __name__ == "__main__":
    main()
