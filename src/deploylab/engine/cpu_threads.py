"""OpenMP thread waiting for the CPU path: sleep at barriers instead of spinning.

GNU OpenMP's threads spin at every barrier by default. With two torch threads on a 2-core
machine that other processes also use, a spinning thread holds a core its partner needs and
each of the ~600 small ops of a decode step waits for a time slice: a decode step measured
2,338 ms with the default policy and 64 ms with `OMP_WAIT_POLICY=PASSIVE` in the same minutes
(docs/engine.md "Quantized CPU path"). The variable is read once, when torch loads OpenMP, so
`passive_omp_waits` must run before the first `import torch`.
"""

from __future__ import annotations

import os
import sys


def passive_omp_waits() -> bool:
    """Set `OMP_WAIT_POLICY=PASSIVE` unless the user set a policy; True when it takes effect
    (torch not imported yet)."""
    if "OMP_WAIT_POLICY" in os.environ:
        return False
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return "torch" not in sys.modules


# Steps of at most this many tokens run on one thread. Measured on this 2-core machine
# (shared, passive waits, same minutes): a batch-1 decode step took 22-35 ms on one thread
# and 43-48 ms on two; a batch-8 step 62-82 ms on one and 45-48 ms on two.
ONE_THREAD_TOKENS = 4


class StepThreads:
    """Per-step torch intra-op threads on the CPU: one thread for the forward of a step of a
    few tokens (its matmuls are too small to split: each op would wait for the second thread
    to wake), the process's count otherwise and outside the forward."""

    def __init__(self) -> None:
        self.saved = 0  # the count to restore (0: nothing changed)

    def fit(self, num_tokens: int) -> None:
        """Before a forward of `num_tokens` tokens."""
        import torch

        if num_tokens <= ONE_THREAD_TOKENS and torch.get_num_threads() > 1:
            self.saved = torch.get_num_threads()
            torch.set_num_threads(1)

    def restore(self) -> None:
        """After the forward: the thread count it had before."""
        if self.saved:
            import torch

            torch.set_num_threads(self.saved)
            self.saved = 0


def step_threads(num_threads: int | None, device_type: str) -> StepThreads | None:
    """The engine's hook: per-step threads on the CPU unless the user pinned a count."""
    import torch

    if device_type != "cpu" or num_threads is not None or torch.get_num_threads() < 2:
        return None
    return StepThreads()
