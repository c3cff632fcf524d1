"""Timing one DataLoader: samples counted right for every batching mode, settings kept."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.utils.data import Dataset

from deploylab.dataloader.measure import CyclingSampler, default_warmup, measure


class Seven(Dataset[Any]):
    def __len__(self) -> int:
        return 7

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.full((3, 2), float(index))


def test_samples_are_counted_for_each_batching_mode() -> None:
    assert measure(Seven(), {"batch_size": 3}, None, 4, 1).samples == 12
    assert measure(Seven(), {"batch_size": None}, None, 4, 1).samples == 4
    # A batch sampler's batches are counted by their first dimension; epochs repeat.
    by_sampler = measure(Seven(), {"batch_sampler": [[0, 1], [2, 3, 4]]}, None, 4, 1)
    assert by_sampler.samples == 3 + 2 + 3 + 2


@pytest.mark.usefixtures("no_leftover_children")
def test_worker_settings_run_and_are_cleaned_up() -> None:
    kwargs = {
        "batch_size": 2,
        "num_workers": 2,
        "shuffle": True,
        "persistent_workers": True,
        "prefetch_factor": 3,
    }
    result = measure(Seven(), kwargs, lambda batch: None, 6, default_warmup(kwargs))
    assert result.samples == 12 and result.warmup_steps == 7
    assert result.workers_seen == 2
    assert result.samples_per_s > 0 and result.step_time_ms > 0
    assert 0 <= result.data_wait_share <= 1


def test_step_receives_every_batch_and_the_loader_outlasts_the_run() -> None:
    seen: list[torch.Tensor] = []
    measure(Seven(), {"batch_size": 2, "shuffle": True}, seen.append, 10, 2)
    assert len(seen) == 12
    assert all(batch.shape == (2, 3, 2) for batch in seen)  # the epoch end never cuts a batch
    values = sorted({float(b[i, 0, 0]) for b in seen[:3] for i in range(2)})
    assert len(values) == 6  # shuffled without replacement within an epoch


def test_cycling_sampler_repeats_epochs() -> None:
    assert list(CyclingSampler(3, 7, shuffle=False)) == [0, 1, 2, 0, 1, 2, 0]
    shuffled = list(CyclingSampler(4, 8, shuffle=True))
    assert sorted(shuffled[:4]) == [0, 1, 2, 3] and sorted(shuffled[4:]) == [0, 1, 2, 3]
