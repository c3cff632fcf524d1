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
