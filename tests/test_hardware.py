"""The accelerator datasheet table and its lookup by device name."""

from __future__ import annotations

import pytest

from deploylab.errors import ConfigError
from deploylab.hardware import ACCELERATORS, lookup


@pytest.mark.parametrize(
    ("device_name", "key"),
    [
        ("NVIDIA H100 80GB HBM3", "h100"),
        ("NVIDIA H200", "h200"),
        ("NVIDIA A100-SXM4-80GB", "a100"),
        ("NVIDIA B200", "b200"),
    ],
)
def test_lookup_by_torch_device_name(device_name: str, key: str) -> None:
    assert lookup(device_name) is ACCELERATORS[key]


def test_unknown_device_names_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="No datasheet figures for 'Tesla T4'.*H100"):
        lookup("Tesla T4")


def test_floors() -> None:
    h100 = ACCELERATORS["h100"]
    assert h100.decode_floor_ms(3.35e9) == pytest.approx(1.0)
    assert h100.compute_floor_ms(989e9) == pytest.approx(1.0)
    # Bandwidth and peak rate grow from one generation to the next.
    order = [ACCELERATORS[k] for k in ("a100", "h100", "h200", "b200")]
    assert [a.bandwidth_gbs for a in order] == sorted(a.bandwidth_gbs for a in order)
