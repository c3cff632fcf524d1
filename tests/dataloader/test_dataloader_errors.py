"""Errors users can cause are clear, user-code failures read as theirs, workers never leak."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from deploylab.dataloader import StagedDataset, diagnose, sweep_workers
from deploylab.errors import UsageError, UserCodeError


class Numbers(Dataset[Any]):
    """Small tensors; fails in `fail_in` ("worker", "main" or "never")."""

    def __init__(self, fail_in: str = "never", length: int = 32) -> None:
        self.fail_in = fail_in
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> torch.Tensor:
        in_worker = get_worker_info() is not None
        if (self.fail_in == "worker" and in_worker) or self.fail_in == "main":
            raise ValueError(f"corrupt record {index}")
        return torch.full((4,), float(index))


@pytest.mark.usefixtures("no_leftover_children")
def test_dataset_error_in_a_worker_is_the_users_with_traceback() -> None:
    with pytest.raises(UserCodeError) as info:
        diagnose(Numbers("worker"), {"batch_size": 4, "num_workers": 2}, steps=3)
    message = str(info.value)
    assert message.startswith("your dataset (in a DataLoader worker process) raised ValueError")
    assert "corrupt record" in message
    assert "not from deploylab" in message
    assert "__getitem__" in info.value.user_traceback
    assert "test_dataloader_errors.py" in info.value.user_traceback


@pytest.mark.usefixtures("no_leftover_children")
def test_dataset_error_in_the_main_process_hides_our_frames() -> None:
    with pytest.raises(UserCodeError) as info:
        diagnose(Numbers("main"), {"batch_size": 4}, steps=3)
    assert "ValueError: corrupt record 0" in str(info.value)
    tb = info.value.user_traceback
    assert tb.startswith("Traceback (most recent call last):")
    assert "test_dataloader_errors.py" in tb and "__getitem__" in tb
    assert "deploylab/dataloader" not in tb


@pytest.mark.usefixtures("no_leftover_children")
def test_training_step_error_stops_workers() -> None:
    def step(batch: torch.Tensor) -> None:
        raise RuntimeError("CUDA out of memory (pretend)")

    with pytest.raises(UserCodeError) as info:
        diagnose(Numbers(), {"batch_size": 4, "num_workers": 2}, step, steps=3)
    assert str(info.value).startswith("your training step raised RuntimeError: CUDA out of memory")
    assert "in step" in info.value.user_traceback


@pytest.mark.usefixtures("no_leftover_children")
def test_ctrl_c_in_the_middle_stops_workers() -> None:
    calls = []

    def step(batch: torch.Tensor) -> None:
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        diagnose(Numbers(), {"batch_size": 2, "num_workers": 2}, step, steps=20)


@pytest.mark.usefixtures("no_leftover_children")
def test_error_in_a_stage_callable_names_it() -> None:
    def augment(x: torch.Tensor) -> torch.Tensor:
        raise TypeError("expected a PIL image")

    ds = StagedDataset(list(range(8)), lambda i: torch.zeros(3), augment=augment)
    with pytest.raises(UserCodeError, match="TypeError: expected a PIL image"):
        diagnose(ds, {"batch_size": 2}, steps=2)


def test_empty_dataset_is_a_clear_usage_error() -> None:
    with pytest.raises(UsageError, match="has length 0: there is nothing to load"):
        diagnose(Numbers(length=0), {"batch_size": 4})
    with pytest.raises(UsageError, match="length 0"):
        sweep_workers(Numbers(length=0), {"batch_size": 4}, workers=[0])


def test_empty_streams_and_non_datasets_are_refused() -> None:
    class Stream(IterableDataset[int]):
        def __iter__(self) -> Any:
            return iter(())

    with pytest.raises(UsageError, match="Stream yields no samples"):
        diagnose(Stream())
    with pytest.raises(UsageError, match="not a dataset"):
        diagnose(42)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="precision must be between 0 and 1"):
        diagnose(Numbers(), {}, precision=2)
    with pytest.raises(UsageError, match="confidence must be between 0 and 1"):
        diagnose(Numbers(), {}, confidence=1)


def test_bad_loader_settings_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="DataLoader rejected"):
        diagnose(Numbers(), {"batch_sise": 4}, steps=1)
    with pytest.raises(UsageError, match="not as a DataLoader keyword"):
        diagnose(Numbers(), {"dataset": Numbers()})
    with pytest.raises(UsageError, match="steps must be at least 1"):
        diagnose(Numbers(), {}, steps=0)
    with pytest.raises(UsageError, match="rounds must be at least 1"):
        diagnose(Numbers(), {}, rounds=0)
    with pytest.raises(UsageError, match="num_workers values must be 0 or more"):
        sweep_workers(Numbers(), {}, workers=[-1])
