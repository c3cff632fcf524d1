"""`serve --sleep-fixed-addresses`: the default follows the device and whether a model can
sleep; an explicit flag wins."""

from __future__ import annotations

import pytest
import torch

from deploylab.cli.serve import fixed_addresses


def test_explicit_flag_wins() -> None:
    assert fixed_addresses(True, False, "cpu") is True
    assert fixed_addresses(False, True, "cpu") is False


def test_default_is_off_on_the_cpu_and_for_one_model() -> None:
    assert fixed_addresses(None, True, "cpu") is False
    assert fixed_addresses(None, False, "auto") is False


def test_default_is_on_with_cuda_when_a_model_can_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    # No GPU here: only the device probe is replaced, the policy itself runs.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert fixed_addresses(None, True, "auto") is True
    assert fixed_addresses(None, True, "cuda") is True
    assert fixed_addresses(None, False, "cuda") is False
    assert fixed_addresses(None, True, "cpu") is False
