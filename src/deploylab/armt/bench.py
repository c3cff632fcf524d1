"""Time and peak memory of full-attention Llama, sequential ARMT and diagonal ARMT.

All three run the same random-weight model (the engine's `LlamaForCausalLM`; ARMT adds its
memory parameters on top) on the same random token ids and produce next-token logits for the
last position. Full attention is one dense causal SDPA pass over the whole context; the ARMT
executors keep no per-token outputs, so their memory does not grow with the context.
Time: wall clock around one forward with the device synchronised, median of `repeats` after
`warmup` untimed runs. Peak memory: the CUDA allocator's peak during one timed run (not
measured on CPU).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from deploylab.armt.config import ARMTConfig
from deploylab.armt.diagonal import run_diagonal
from deploylab.armt.grouped import GroupedBackend
from deploylab.armt.model import ARMTModel, random_armt
from deploylab.armt.sequential import run_sequential
from deploylab.errors import UsageError

METHODS = ("full", "sequential", "diagonal")
METHOD_LABELS = {
    "full": "Llama, full attention (SDPA)",
    "sequential": "ARMT, sequential",
    "diagonal": "ARMT, diagonal batching",
}
_GIB = 1024**3


@dataclass(frozen=True)
class BenchSettings:
    """What to measure."""

    shape: str
    contexts: tuple[int, ...]
    armt: ARMTConfig
    device: torch.device
    dtype: torch.dtype
    methods: tuple[str, ...] = METHODS
    backend: GroupedBackend = "bmm"
    repeats: int = 3
    warmup: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.contexts or any(c < 1 for c in self.contexts):
            raise UsageError(f"Contexts must be positive token counts, got {self.contexts}.")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise UsageError(
                f"Unknown method(s) {unknown or self.methods}; choose from {', '.join(METHODS)}."
            )
        if self.repeats < 1 or self.warmup < 0:
            raise UsageError("repeats must be >= 1 and warmup >= 0.")


@dataclass
class BenchRow:
    """One (context, method) measurement."""

    context: int
    method: str
    seconds: float | None = None
    peak_gib: float | None = None  # allocator peak during the run, weights included
    added_gib: float | None = None  # that peak minus what was allocated before the run
    steps: int | None = None  # layer calls (sequential) or grouped steps (diagonal)
    note: str = ""
    all_seconds: list[float] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float | None:
        return None if not self.seconds else self.context / self.seconds

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["tokens_per_s"] = self.tokens_per_s
        return d


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def method_runner(
    model: ARMTModel, method: str, backend: GroupedBackend
) -> Callable[[torch.Tensor], tuple[torch.Tensor, int | None]]:
    """A function ids -> (last-token logits, steps) for `method`."""

    def full(ids: torch.Tensor) -> tuple[torch.Tensor, int | None]:
        with torch.inference_mode():
            positions = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0)
            hidden = model.base(ids, positions)
            return model.compute_logits(hidden[:, -1]), None

    def sequential(ids: torch.Tensor) -> tuple[torch.Tensor, int | None]:
        out = run_sequential(model, ids, keep_hidden=False)
        return model.compute_logits(out.last_hidden), out.num_steps

    def diagonal(ids: torch.Tensor) -> tuple[torch.Tensor, int | None]:
        out = run_diagonal(model, ids, keep_hidden=False, backend=backend)
        return model.compute_logits(out.last_hidden), out.num_steps

    return {"full": full, "sequential": sequential, "diagonal": diagonal}[method]


def measure(
    run: Callable[[torch.Tensor], tuple[torch.Tensor, int | None]],
    ids: torch.Tensor,
    row: BenchRow,
    settings: BenchSettings,
) -> None:
    """Fill `row` with the median time and the peak memory of `run(ids)`."""
    device = settings.device
    try:
        for _ in range(settings.warmup):
            run(ids)
        _sync(device)
        for i in range(settings.repeats):
            if device.type == "cuda" and i == 0:
                torch.cuda.reset_peak_memory_stats(device)
                before = torch.cuda.memory_allocated(device)
            t0 = time.perf_counter()
            _, steps = run(ids)
            _sync(device)
            row.all_seconds.append(time.perf_counter() - t0)
            if device.type == "cuda" and i == 0:
                peak = torch.cuda.max_memory_allocated(device)
                row.peak_gib = peak / _GIB
                row.added_gib = (peak - before) / _GIB
            row.steps = steps
        row.seconds = statistics.median(row.all_seconds)
    except torch.cuda.OutOfMemoryError:
        row.note = "out of memory"
        row.all_seconds.clear()
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()


def run_bench(
    settings: BenchSettings, on_row: Callable[[BenchRow], None] | None = None
) -> list[BenchRow]:
    """Measure every method at every context; `on_row` sees each row as it is done."""
    model = random_armt(
        settings.shape,
        settings.armt,
        dtype=settings.dtype,
        device=settings.device,
        seed=settings.seed,
    )
    gen = torch.Generator(device="cpu").manual_seed(settings.seed)
    vocab = model.llama_config.vocab_size
    rows: list[BenchRow] = []
    for context in settings.contexts:
        ids = torch.randint(0, vocab, (1, context), generator=gen).to(settings.device)
        for method in settings.methods:
            row = BenchRow(context=context, method=method)
            measure(method_runner(model, method, settings.backend), ids, row, settings)
            rows.append(row)
            if on_row is not None:
                on_row(row)
    return rows


def speedups(rows: list[BenchRow]) -> dict[tuple[int, str], float]:
    """(context, "vs full" | "vs sequential") -> diagonal's speed-up, where both were timed."""
    times = {(r.context, r.method): r.seconds for r in rows if r.seconds}
    out: dict[tuple[int, str], float] = {}
    for (context, method), t in times.items():
        if method != "diagonal":
            continue
        for base in ("full", "sequential"):
            t_base = times.get((context, base))
            if t_base:
                out[(context, f"vs {base}")] = t_base / t
    return out
