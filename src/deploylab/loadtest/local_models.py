"""`deploylab serve` flags for a run without `--url`: what the scenario needs served.

A multi-model scenario gets the default model under each of its model names, at most
`RESIDENT_MODELS` of them resident at a time; idle models are unloaded (sleep level 2: the
weights are dropped, so memory stays flat however many names there are) after
`KEEP_ALIVE_S` seconds or when another model needs the room. The server answers each
request with the model's state on arrival (`x-deploylab-model-state`), which the report
groups by (class `model_state`).
"""

from __future__ import annotations

from typing import Any

RESIDENT_MODELS = 2
KEEP_ALIVE_S = 30.0


def local_serve_args(scenario: Any, default_model: str) -> tuple[str, ...]:
    """Extra `deploylab serve` flags for `scenario` (none for single-model workloads)."""
    workload = scenario.workload
    if getattr(workload, "kind", None) != "multi-model":
        return ()
    args: list[str] = []
    for name in workload.models.resolved():
        args += ["--model", default_model, "--served-model-name", name]
    return (
        *args,
        "--max-resident-models", str(RESIDENT_MODELS),
        "--sleep-level", "2",
        "--keep-alive", f"{KEEP_ALIVE_S:g}",
        "--kv-cache-gib", "0.25",
    )  # fmt: skip
