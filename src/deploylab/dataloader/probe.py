"""Learning a user's transforms from real calls, so cheap stand-ins of the same output can
replace them: `Recorder` watches a callable, `swap_transform` and `cheap_collate` build the
stand-ins for a dataset's `transform` and a DataLoader's `collate_fn`."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Sequence
from typing import Any

from torch.utils.data import IterableDataset, default_collate

from deploylab.dataloader.spec import CheapTransform, describe_spec, spec_of
from deploylab.dataloader.usercode import call_user

TRANSFORM_HINT = (
    "keep the transforms in an attribute, `self.transform = transform`, and call "
    "`self.transform(sample)` in __getitem__ (or __iter__)"
)


class Recorder:
    """Calls the wrapped function and remembers the input and output of its first call."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.calls: list[tuple[Any, Any]] = []

    def __call__(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        out = self.fn(x, *args, **kwargs)
        if not self.calls:
            self.calls.append((x, out))
        return out


def first_item(dataset: Any, index: int, what: str) -> Any:
    """Item `index` of a map-style dataset, or the first item of an iterable one."""
    if isinstance(dataset, IterableDataset):
        return call_user(what, lambda: next(iter(dataset)))
    return call_user(f"{what}[{index}]", lambda: dataset[index])


def first_items(dataset: Any, count: int, what: str) -> list[Any]:
    """The first `count` items an iterable dataset yields."""
    return call_user(what, lambda: list(itertools.islice(iter(dataset), count)))


def swap_transform(dataset: Any, index: int) -> tuple[Any | None, str | None, str | None]:
    """A copy of `dataset` whose `transform` is a cheap stand-in learned from one real call.

    Returns `(copy, None, None)`, or `(None, why, one-line change that would enable it)`.
    Whatever the dataset does with the transform's result afterwards still runs.
    """
    name = type(dataset).__name__
    if not hasattr(dataset, "transform"):
        why = f"{name} has no `transform` attribute to turn off"
        return None, why, TRANSFORM_HINT
    transform = dataset.transform
    if transform is None:
        return None, "its `transform` is None: there is no augmentation to turn off", None
    probe = copy.copy(dataset)
    recorder = Recorder(transform)
    probe.transform = recorder
    first_item(probe, index, f"your dataset ({name})")
    if not recorder.calls:
        why = f"loading a sample never called {name}.transform"
        return None, why, TRANSFORM_HINT
    out = copy.copy(dataset)
    out.transform = CheapTransform(recorder.calls[0][1])
    return out, None, None


class CheapCollate:
    """A stand-in for a costly `collate_fn`: torch's default collation, fitted to the
    structure, shapes and dtypes of what the user's `collate_fn` returned."""

    def __init__(self, reference: Any) -> None:
        self.fit = CheapTransform(reference)

    def __call__(self, items: Sequence[Any]) -> Any:
        try:
            merged = default_collate(list(items))
        except (TypeError, RuntimeError):
            merged = None
        return self.fit(merged)


def cheap_collate(
    collate: Callable[[Any], Any], items: Sequence[Any], batch: int
) -> tuple[CheapCollate | None, str | None]:
    """A `CheapCollate` for `collate` learned on a batch of `items`, or why there is none."""
    batch_items = list(itertools.islice(itertools.cycle(items), max(1, batch)))
    reference = call_user("your collate_fn", lambda: collate(batch_items))
    cheap = CheapCollate(reference)
    mine = cheap(batch_items)
    if spec_of(mine) != spec_of(reference):
        return None, (
            f"a cheap collate_fn would give {describe_spec(spec_of(mine))} instead of "
            f"{describe_spec(spec_of(reference))}"
        )
    return cheap, None
