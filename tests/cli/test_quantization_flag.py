"""`deploylab serve --quantization`; the CPU thread settings (engine/cpu_threads.py)."""

from __future__ import annotations

import pytest

from deploylab.cli import main
from deploylab.engine.cpu_threads import passive_omp_waits


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--quantization", "int8", "--quantization must be auto, none or int4, got 'int8'"),
        ("--lm-head-quantization", "int2", "--lm-head-quantization must be int8 or int4, got "),
        ("--quantization", "none --lm-head-quantization int4", "needs the CPU's int4 path"),
        ("--device", "cuda --lm-head-quantization int4", "needs the CPU's int4 path"),
    ],
)
def test_unknown_quantization_is_refused(
    flag: str,
    value: str,
    message: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert main(["serve", flag, *value.split()]) == 2
    assert message in capsys.readouterr().err


def test_passive_waits_unless_the_user_chose(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert passive_omp_waits() is False
    import os

    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
    monkeypatch.delenv("OMP_WAIT_POLICY")
    passive_omp_waits()  # torch is loaded in this process: set, but too late to take effect
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"


def test_step_threads_one_thread_for_small_steps_only() -> None:
    import torch

    from deploylab.engine.cpu_threads import StepThreads, step_threads

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert step_threads(1, "cpu") is None  # the user pinned a count
        assert step_threads(None, "cuda") is None
        threads = step_threads(None, "cpu")
        assert isinstance(threads, StepThreads)
        threads.fit(1)
        assert torch.get_num_threads() == 1
        threads.restore()
        assert torch.get_num_threads() == 2
        threads.fit(64)
        assert torch.get_num_threads() == 2
        threads.restore()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
