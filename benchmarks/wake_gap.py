"""Level-1 wake right after a sleep against one after some time asleep: the weights' copy on
the device clock (`SleepReport.copy_seconds`). Right after a sleep the driver is still busy
with the memory the sleep released and the copy ran at half speed (session 11 probe), which
is not what a model that slept for a while sees.

    PYTHONPATH=src python benchmarks/wake_gap.py --shape llama-3.2-1b --gaps 0 0.5 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from deploylab.engine.config import EngineConfig
from deploylab.engine.llm_engine import LLMEngine
from model_swap import h2d_bandwidth  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="llama-3.2-1b")
    p.add_argument("--gaps", type=float, nargs="+", default=[0.0, 0.5, 2.0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.35)
    args = p.parse_args()
    engine = LLMEngine(
        EngineConfig(
            random_weights=args.shape, device="cuda", dtype="bfloat16", enable_sleep_mode=True,
            gpu_memory_utilization=args.gpu_memory_utilization,
        )
    )  # fmt: skip
    weights = engine.sleeper.fixed.weights.nbytes  # type: ignore[union-attr]
    bandwidth = h2d_bandwidth(torch.device("cuda"))
    assert bandwidth is not None
    ideal = weights / bandwidth  # the yardstick: weight bytes / measured H2D bandwidth
    rows = []
    for gap in args.gaps:
        copies, wakes = [], []
        for _ in range(args.repeats):
            engine.sleep(1)
            time.sleep(gap)
            woke = engine.wake_up()
            copies.append(woke.copy_seconds or 0.0)
            wakes.append(woke.seconds)
        row = {
            "gap_s": gap, "copy_s": statistics.median(copies), "wake_s": statistics.median(wakes),
            "copy_gb_s": weights / statistics.median(copies) / 1e9, "copies": copies,
            "wakes": wakes, "wake_vs_ideal": statistics.median(wakes) / ideal,
        }  # fmt: skip
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(json.dumps({
        "device": torch.cuda.get_device_name(), "weight_bytes": weights,
        "h2d_gb_s": bandwidth / 1e9, "ideal_copy_s": ideal,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
