"""The datasets behind variants 3 and 4: cached samples replayed, cached bytes decoded."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch.utils.data import Dataset, IterableDataset

from deploylab.dataloader.report import VariantName
from deploylab.dataloader.spec import fill_slot


class ReplayDataset(Dataset[Any]):
    """`length` items that cycle over a few cached ones: no reading, no decoding, no transforms."""

    def __init__(self, items: Sequence[Any], length: int) -> None:
        self.items = list(items)
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Any:
        return self.items[index % len(self.items)]


class DecodeOnlyDataset(Dataset[Any]):
    """`length` items decoded from a few cached encoded samples: nothing is read.

    Item `i` is `templates[k]` with its slot filled by `finish(decode(raws[k]))`,
    `k = i % len(raws)`; `finish` is the cheap transform of variant 2.
    """

    def __init__(
        self,
        raws: Sequence[Any],
        templates: Sequence[Any],
        decode: Callable[[Any], Any],
        finish: Callable[[Any], Any] | None,
        length: int,
    ) -> None:
        self.raws = list(raws)
        self.templates = list(templates)
        self.decode = decode
        self.finish = finish
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Any:
        k = index % len(self.raws)
        sample = self.decode(self.raws[k])
        if self.finish is not None:
            sample = self.finish(sample)
        return fill_slot(self.templates[k], sample)


class ReplayIterable(IterableDataset[Any]):
    """An endless stream cycling over a few cached items (variant 3 of an IterableDataset)."""

    def __init__(self, items: Sequence[Any]) -> None:
        self.items = list(items)

    def __iter__(self) -> Iterator[Any]:
        while True:
            yield from self.items


class CycledDataset(Dataset[Any]):
    """`length` items cycling over the items of a small map-style dataset (fetched each time)."""

    def __init__(self, inner: Any, length: int) -> None:
        self.inner = inner
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Any:
        return self.inner[index % len(self.inner)]

    def __getitems__(self, indices: list[int]) -> list[Any]:
        keys = [i % len(self.inner) for i in indices]
        getitems = getattr(self.inner, "__getitems__", None)
        if getitems is not None:
            return list(getitems(keys))
        return [self.inner[k] for k in keys]


@dataclass
class VariantPlan:
    """A variant ready to measure (`dataset`) or skipped (`skipped_reason`, and `enable`: the
    one-line change that would let the doctor build it)."""

    name: VariantName
    dataset: Any | None
    skipped_reason: str | None = None
    note: str | None = None
    enable: str | None = None
    collate_fn: Callable[[Any], Any] | None = None  # replaces the loader's collate_fn


@dataclass
class Ablation:
    """The four variants formed for one dataset, and how its stages were found.

    `removed` says what variant 2 turned off ("the dataset's transform", "collate_fn", ...);
    `cleanup` runs when the diagnosis is over (e.g. removing files copied to RAM).
    """

    adapter: str
    plans: list[VariantPlan]
    removed: str = "the dataset's transforms"
    cleanup: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        """Release what the variants hold (RAM copies of files)."""
        for fn in self.cleanup:
            fn()


def cache_indices(length: int, count: int) -> list[int]:
    """`count` indices spread evenly over `range(length)` (all of them when fewer)."""
    count = min(count, length)
    return sorted({i * length // count for i in range(count)})
