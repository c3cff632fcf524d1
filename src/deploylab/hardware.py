"""Accelerator datasheet figures: memory, bandwidth and dense matrix throughput.

Used to put measured times beside their floors (`benchmarks/roofline.py`) and, later, to
size deployments in reports. Figures are the vendors' datasheet numbers for the SXM parts
(dense, no sparsity); a measured figure from the same run is always preferred when one exists.
"""

from __future__ import annotations

from dataclasses import dataclass

from deploylab.errors import ConfigError


@dataclass(frozen=True)
class Accelerator:
    """One accelerator model's datasheet figures."""

    name: str
    memory_gib: float
    bandwidth_gbs: float  # HBM bandwidth, GB/s (10^9 bytes)
    bf16_tflops: float  # dense bf16 tensor-core peak, TFLOP/s
    fp8_tflops: float | None = None  # dense fp8 peak where the part has fp8 units

    def decode_floor_ms(self, bytes_moved: float) -> float:
        """Milliseconds to move `bytes_moved` at the datasheet bandwidth."""
        return bytes_moved / (self.bandwidth_gbs * 1e9) * 1e3

    def compute_floor_ms(self, flops: float) -> float:
        """Milliseconds for `flops` at the datasheet bf16 peak."""
        return flops / (self.bf16_tflops * 1e12) * 1e3


ACCELERATORS: dict[str, Accelerator] = {
    "a100": Accelerator("NVIDIA A100 80GB SXM", 80, 2039, 312),
    "h100": Accelerator("NVIDIA H100 80GB SXM", 80, 3350, 989, 1979),
    "h200": Accelerator("NVIDIA H200 141GB SXM", 141, 4800, 989, 1979),
    "b200": Accelerator("NVIDIA B200 180GB", 180, 8000, 2250, 4500),
}


def lookup(device_name: str) -> Accelerator:
    """The table entry whose key appears in a device name such as torch's
    `get_device_name()` ("NVIDIA H100 80GB HBM3" -> h100)."""
    lowered = device_name.lower()
    for key, acc in ACCELERATORS.items():
        if key in lowered:
            return acc
    known = ", ".join(a.name for a in ACCELERATORS.values())
    raise ConfigError(
        f"No datasheet figures for '{device_name}'. Known accelerators: {known}. "
        "Add an entry to deploylab.hardware.ACCELERATORS."
    )
