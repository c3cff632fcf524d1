"""How often does the DataLoader doctor name the right stage, and how fast?

Every planted case of tests/dataloader/dataloader_cases.py (slow storage with jitter, heavy
augmentation, slow decoding, slow training step, storage + augmentation at once) on every
dataset shape (torchvision style, ImageFolder look-alike, Hugging Face `datasets`,
webdataset, a plain IterableDataset, augmentation in collate_fn), each dataset unmodified,
diagnosed with the default settings (`diagnose(dataset, loader_kwargs, step)`). A case is
right when the stages the verdict names, largest first, start with the planted ones (both,
in order, for two at once).

Targets (issue 18): right in at least 95% of cases; median time to verdict under 30 s on a
2-core machine. Run: `PYTHONPATH=src .venv/bin/python benchmarks/dataloader_accuracy.py
[--repeats N] [--shapes a,b] [--cases a,b]`. It prints the table and writes every number to
benchmarks/results/dataloader_accuracy.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "dataloader"))

from dataloader_cases import CASES, SHAPES, Costs, build_case  # noqa: E402

from deploylab.dataloader import diagnose  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "dataloader_accuracy.json"


def run_case(shape: str, case: str, root: Path) -> dict[str, Any]:
    """Diagnose one planted case with the default settings; what it named and how fast."""
    planted = build_case(shape, case, root, Costs())
    started = time.perf_counter()
    report = diagnose(planted.dataset, planted.loader_kwargs, planted.step)
    seconds = time.perf_counter() - started
    got = [s.stage for s in report.verdict.stages] or [report.verdict.bottleneck]
    return {
        "shape": shape,
        "case": case,
        "expected": planted.expected,
        "named": got,
        "right": got[: len(planted.expected)] == planted.expected,
        "extra": got[len(planted.expected) :],
        "seconds": seconds,
        "confidence": report.verdict.confidence,
        "rounds": report.rounds,
        "not_built": [v.name.value for v in report.variants if v.status != "measured"],
        "headline": report.verdict.headline,
    }


def table(rows: list[dict[str, Any]]) -> str:
    """Per case: right / runs, median seconds; then the totals."""
    lines = [f"{'shape':12s} {'case':22s} {'right':>6s} {'median s':>9s} {'sure':>6s}  also named"]
    for shape in dict.fromkeys(r["shape"] for r in rows):
        for case in dict.fromkeys(r["case"] for r in rows):
            mine = [r for r in rows if r["shape"] == shape and r["case"] == case]
            if not mine:
                continue
            right = sum(r["right"] for r in mine)
            sure = [r["confidence"] for r in mine if r["confidence"] is not None]
            extra = sorted({s for r in mine for s in r["extra"]})
            lines.append(
                f"{shape:12s} {case:22s} {right:>3d}/{len(mine):<2d} "
                f"{statistics.median(r['seconds'] for r in mine):9.1f} "
                f"{(100 * min(sure)) if sure else float('nan'):5.0f}%  {', '.join(extra) or '-'}"
            )
    right = sum(r["right"] for r in rows)
    extra = sum(bool(r["extra"]) for r in rows)
    seconds = sorted(r["seconds"] for r in rows)
    p90 = seconds[int(0.9 * (len(seconds) - 1))]
    lines.append(
        f"all: {right}/{len(rows)} right ({100 * right / len(rows):.0f}%), median "
        f"{statistics.median(seconds):.1f} s, p90 {p90:.1f} s, max {seconds[-1]:.1f} s to the "
        f"verdict; {extra} case(s) also named a stage that was not planted"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--cases", default=",".join(CASES))
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="deploylab-accuracy-") as tmp:
        for _ in range(args.repeats):
            for shape in args.shapes.split(","):
                for case in args.cases.split(","):
                    row = run_case(shape, case, Path(tmp))
                    rows.append(row)
                    mark = "ok " if row["right"] else "BAD"
                    print(
                        f"{mark} {shape:12s} {case:22s} {row['seconds']:5.1f} s  {row['named']}",
                        flush=True,
                    )
    print()
    print(table(rows))
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "date": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": f"{platform.processor() or platform.machine()}, "
                f"{len(os.sched_getaffinity(0))} CPU cores",
                "load_average_at_end": os.getloadavg(),
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"\nJSON: {RESULTS}")


if __name__ == "__main__":
    main()
