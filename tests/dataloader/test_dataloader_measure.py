"""Timing one DataLoader: samples counted right for every batching mode, settings kept."""

from __future__ import annotations

import functools
import signal
import time
from pathlib import Path
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


def _die_of_sigterm(ready: Path, worker_id: int) -> None:
    """Worker start-up as it is before torch installs its handlers: SIGTERM kills outright."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    (ready / str(worker_id)).touch()


class CtrlCAtStart(torch.utils.data.Sampler[int]):
    """Ctrl-C as it lands inside `iter(loader)`, once the workers are up."""

    def __init__(self, ready: Path, workers: int) -> None:
        self.ready, self.workers = ready, workers

    def __len__(self) -> int:
        return 7

    def __iter__(self) -> Any:
        deadline = time.monotonic() + 30
        while len(list(self.ready.iterdir())) < self.workers and time.monotonic() < deadline:
            time.sleep(0.01)
        raise KeyboardInterrupt
        yield 0


@pytest.mark.usefixtures("no_leftover_children")
def test_ctrl_c_while_the_workers_start_stays_an_interrupt(tmp_path: Path) -> None:
    # Workers that die of our SIGTERM used to trip torch's SIGCHLD handler while we reaped
    # them; its "worker killed by signal" replaced the interrupt (the CLI exited 1, not 130).
    kwargs = {
        "batch_size": 2,
        "num_workers": 2,
        "sampler": CtrlCAtStart(tmp_path, 2),
        "worker_init_fn": functools.partial(_die_of_sigterm, tmp_path),
    }
    with pytest.raises(KeyboardInterrupt):
        measure(Seven(), kwargs, None, 4, 1)
