"""The datasets behind variants 3 and 4: cached samples replayed, cached bytes decoded."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch.utils.data import Dataset

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


@dataclass
class VariantPlan:
    """A variant ready to measure (`dataset`) or skipped (`skipped_reason`)."""

    name: VariantName
    dataset: Dataset[Any] | None
    skipped_reason: str | None = None
    note: str | None = None


@dataclass
class Ablation:
    """The four variants formed for one dataset, and how its stages were found."""

    adapter: str
    plans: list[VariantPlan]


def cache_indices(length: int, count: int) -> list[int]:
    """`count` indices spread evenly over `range(length)` (all of them when fewer)."""
    count = min(count, length)
    return sorted({i * length // count for i in range(count)})
