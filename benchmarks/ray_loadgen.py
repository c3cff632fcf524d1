"""Distributed load generation on Ray vs the multi-process mode, on this machine.

The highest request rate sustained with p99 schedule lateness under 5 ms and nothing failed
(`deploylab sim` at zero latency, 16-token prompts, 4-token answers), with 1, 2 and 4 workers:
Ray actors on a local Ray instance (`--ray-address local`) beside the same number of local
worker processes (`--workers N`), measured in one run. Same search as
benchmarks/loadgen_accuracy.py (climb a ladder, one retry, refine).

Run: `.venv/bin/python benchmarks/ray_loadgen.py [--quick] [--workers 1 2 4]`; writes
benchmarks/results/ray_loadgen.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from deploylab.loadtest.config import LoadConfig
from deploylab.loadtest.ray_workers import connect
from loadgen_accuracy import ZERO_SIM, search
from loadgen_harness import Measured, Ours, SimProcess


def save(path: Path, out: dict[str, Any]) -> None:
    out["load_average_at_end"] = os.getloadavg()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 s per rate instead of 6 s")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ray_loadgen.json"))
    args = parser.parse_args()
    duration = 3.0 if args.quick else 6.0
    ladder = [100.0, 250.0, 500.0, 750.0, 1000.0, 1500.0, 2000.0, 3000.0, 4000.0]
    connect("local", max(args.workers))
    out: dict[str, Any] = {
        "device": "this 2-core CPU machine",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "load_average_at_start": os.getloadavg(),
        "rate_duration_s": duration,
        "results": {},
    }
    with tempfile.TemporaryDirectory() as tmp, SimProcess(ZERO_SIM, Path(tmp)) as sim:
        ours = Ours(sim.url, Path(tmp), 16, 4)
        for workers in args.workers:
            for mode, ray_address in (("processes", None), ("ray", "local")):

                def measure(
                    rates: list[float], w: int = workers, address: str | None = ray_address
                ) -> list[Measured]:
                    return [
                        ours.run(
                            LoadConfig(
                                rate=r, arrival="constant", duration_s=duration, warmup_s=1.0,
                                cooldown_s=0.5, workers=w, ray_address=address,
                            ),
                            str(r),
                        )
                        for r in rates
                    ]  # fmt: skip

                found = search(measure, ladder)
                out["results"][f"{mode}_{workers}"] = found
                print(
                    f"{mode:>9}, {workers} worker(s): {found['max_sustained_rps']:.0f} req/s "
                    f"sustained (p99 lateness < 5 ms), keeps up to {found['max_keeps_up_rps']:.0f}",
                    flush=True,
                )
                save(args.out, out)  # as it goes: a slow sim shutdown must not lose them
    save(args.out, out)
    print(f"load average start {out['load_average_at_start']}, end {out['load_average_at_end']}")


if __name__ == "__main__":
    main()
