"""Shared pytest fixtures and markers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

# Tests that judge real shares of time (the DataLoader doctor's blocked shares): `make test`
# runs them alone after the rest, which runs on two workers.
SERIAL_DIRS = ("dataloader",)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the `SERIAL_DIRS` tests `serial`; skip tests marked `gpu` without CUDA."""
    for item in items:
        if item.path.parent.name in SERIAL_DIRS:
            item.add_marker(pytest.mark.serial)
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _free_cuda_memory_after_gpu_tests(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a `gpu` test, collect what it dropped and return the cached blocks: engines size
    their KV cache from the device's free memory, so one test's leftovers must not shrink
    the next one's budget."""
    yield
    if "gpu" in request.keywords:
        import gc

        import torch

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
